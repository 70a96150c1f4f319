"""cifar_jax: train CIFAR-10/100 image classifiers with JAX and Flax."""
import setuptools

setuptools.setup(
    name="cifar_jax",
    version="0.1.0",
    description="Train CIFAR-10/100 image classifiers with JAX and Flax.",
    packages=setuptools.find_packages(include=["cifar_jax", "cifar_jax.*"]),
    # The tested range: the lower bounds below are the oldest versions tested (.ci/oldest.txt,
    # on Python 3.11); the newest are whatever pip resolves on Python 3.13 (.ci/versions).
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "ml-collections>=1.1.0",
        "numpy>=2.4.6",
        "tensorflow-datasets>=4.9.10",
        # TensorBoard event files without TensorFlow.
        "tensorboardX>=2.6.5",
        "tqdm>=4.70.1",
        # Decodes images: the tfds copy of CIFAR, the folder source, predict's files.
        "pillow>=13.0.0",
        # Pretrained weights: .safetensors without PyTorch, and Keras' .h5 files.
        "safetensors>=0.8.0",
        "h5py>=3.16.0",
        # The figures of cifar_jax.report and cifar_jax.compare.
        "matplotlib>=3.11.2",
    ],
    extras_require={
        # pytest-xdist: the suite runs on two workers (`-n 2`); most of its time is
        # single-threaded XLA compilation.
        # nbclient and ipykernel: a test runs notebooks/quickstart.ipynb.
        "test": ["pytest>=8", "pytest-xdist>=3.6", "ruff==0.14.0", "nbclient>=0.10",
                 "nbformat>=5.10", "ipykernel>=6.29"],
        # Only needed to *build* the tfds copy of CIFAR (`tfds build`); reading it
        # back with `tfds.data_source` needs no TensorFlow.
        "tfds-build": ["tensorflow-cpu"],
        # Logging to Weights & Biases (config.logging.wandb_project); imported only then.
        "wandb": ["wandb>=0.31.0"],
    },
)
