"""glean-jax: GLEAN super-resolution in JAX/Flax, numerically equal to OpenMMLab mmagic."""

__version__ = "0.1.0"
