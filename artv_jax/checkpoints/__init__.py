"""Weight conversion from PyTorch Stable Diffusion checkpoints, and orbax checkpoint I/O."""
