"""cifar_jax: train CIFAR-10/100 image classifiers with JAX and Flax."""
import setuptools

setuptools.setup(
    name="cifar_jax",
    version="0.1.0",
    description="Train CIFAR-10/100 image classifiers with JAX and Flax.",
    packages=setuptools.find_packages(include=["cifar_jax", "cifar_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7",
        "flax>=0.11",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "ml-collections>=1.0",
        "numpy>=1.26",
        "tensorflow-datasets>=4.9.7",
        # TensorBoard event files without TensorFlow.
        "tensorboardX>=2.6",
        "tqdm>=4.66",
        # Decodes the images of the tfds copy of CIFAR.
        "pillow>=10",
        # Pretrained weights: .safetensors without PyTorch, and Keras' .h5 files.
        "safetensors>=0.4",
        "h5py>=3.10",
        # The figures of cifar_jax.report and cifar_jax.compare.
        "matplotlib>=3.8",
    ],
    extras_require={
        # pytest-xdist: the suite runs on two workers (`-n 2`); most of its time is
        # single-threaded XLA compilation.
        "test": ["pytest>=8", "pytest-xdist>=3.6", "ruff==0.14.0"],
        # Only needed to *build* the tfds copy of CIFAR (`tfds build`); reading it
        # back with `tfds.data_source` needs no TensorFlow.
        "tfds-build": ["tensorflow-cpu"],
    },
)
