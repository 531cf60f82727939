"""Weight conversion from PyTorch Stable Diffusion checkpoints, and orbax checkpoint I/O.

    from artv_jax.checkpoints import load_pretrained
    sd = load_pretrained("converted/")  # written by `python -m artv_jax.convert`
"""
from artv_jax.checkpoints.pretrained import StableDiffusion, load_pretrained

__all__ = ["StableDiffusion", "load_pretrained"]
