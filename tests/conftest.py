"""Test set-up: JAX sees 8 CPU devices, so parallel code runs as on 8 GPUs."""
import os

# Must happen before JAX initialises its backends.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
