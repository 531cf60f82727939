"""artv_jax: ART·V auto-regressive text-to-video diffusion in JAX/Flax."""
