"""Classifier-free guidance (Ho & Salimans, 2022), and ART·V's two-condition variant."""
import jax


def cfg(eps_uncond: jax.Array, eps_cond: jax.Array, scale: float | jax.Array) -> jax.Array:
  """ε(∅) + s·(ε(c) − ε(∅)): s = 1 is the conditional model, s > 1 pushes further along c."""
  return eps_uncond + scale * (eps_cond - eps_uncond)


def dual_cfg(eps_none: jax.Array, eps_ref: jax.Array, eps_ref_text: jax.Array,
             ref_scale: float | jax.Array, text_scale: float | jax.Array) -> jax.Array:
  """ART·V dual guidance on the reference frames R and the text c (METHOD.md, idea 1).

      ε̂ = ε(∅,∅) + s_ref·(ε(R,∅) − ε(∅,∅)) + s_txt·(ε(R,c) − ε(R,∅))

  The text direction is taken with the references present, so text guidance acts on top of
  the motion the references imply. Equal scales reduce to ``cfg(eps_none, eps_ref_text, s)``.

  Args:
    eps_none: ε(∅,∅), references and text dropped, [B, H, W, C].
    eps_ref: ε(R,∅), references only.
    eps_ref_text: ε(R,c), both conditions.
    ref_scale: s_ref.
    text_scale: s_txt.
  """
  return cfg(eps_none, eps_ref, ref_scale) + text_scale * (eps_ref_text - eps_ref)
