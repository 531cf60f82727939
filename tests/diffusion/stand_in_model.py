"""A deterministic stand-in for the UNet, shared by the sampler-vs-diffusers tests."""


def fake_model(x, t, xp):
  """A smooth elementwise function of (x_t, t), in numpy or jax.numpy (``xp``).

  Mostly x_t itself (the best ε guess for pure noise), so the x0 it implies stays unit scale.
  """
  return 0.97 * x + 0.1 * xp.sin(3 * x + t / 250)
