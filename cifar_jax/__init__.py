"""cifar_jax: train CIFAR-10/100 image classifiers with JAX and Flax."""
