"""Flax (linen) ports of the Stable Diffusion networks and the ART·V wrapper."""
