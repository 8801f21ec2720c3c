"""Converters between PyTorch checkpoints (mmagic, torchvision) and glean-jax checkpoints."""
