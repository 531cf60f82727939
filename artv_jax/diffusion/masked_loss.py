"""ART·V's masked diffusion objective (METHOD.md §2), with reference noise augmentation and the
condition dropouts of classifier-free guidance (§1).

The network predicts ε_θ (or v_θ) and a mask M ∈ [0, 1]. The reference frame z_ref implies its
own prediction, the one that turns it into the current noisy input:

    ε_ref = (x_t − α_t z_ref) / σ_t

and the prediction actually used is the per-pixel mixture

    ε̂ = M ⊙ ε_θ + (1 − M) ⊙ ε_ref.

Because x0, ε and v are affine in each other for a fixed x_t, mixing in ε space, x0 space
(x̂0 = M x̂0_θ + (1 − M) z_ref) or v space gives the same x̂0: :func:`masked_prediction` mixes in
the network's own parameterisation.
"""
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from artv_jax.diffusion.schedule import (Schedule, alpha_sigma, expand_to, prediction_target,
                                         q_sample)


def reference_prediction(schedule: Schedule, x_t: jax.Array, z_ref: jax.Array, t: jax.Array,
                         prediction_type: str) -> jax.Array:
  """The network output (ε or v) that would reconstruct exactly ``z_ref`` from ``x_t``.

  x_t, z_ref: [B, h, w, C]; t: [B] int -> [B, h, w, C].
  """
  alpha, sigma = alpha_sigma(schedule, t)
  eps_ref = (x_t - expand_to(alpha, x_t) * z_ref) / expand_to(sigma, x_t)
  return prediction_target(schedule, z_ref, t, eps_ref, prediction_type)


def masked_prediction(schedule: Schedule, output: jax.Array, mask: jax.Array, x_t: jax.Array,
                      z_ref: jax.Array, t: jax.Array, prediction_type: str) -> jax.Array:
  """M ⊙ output + (1 − M) ⊙ reference_prediction: what ART·V predicts.

  output: [B, h, w, C] the network's ε_θ or v_θ; mask: [B, h, w, 1]; z_ref: [B, h, w, C] the
  clean previous frame (not its noise-augmented copy).
  """
  ref = reference_prediction(schedule, x_t, z_ref, t, prediction_type)
  return mask * output + (1.0 - mask) * ref


class CondDropout(NamedTuple):
  """Per-example booleans [B]: which conditions are kept for this training example."""
  keep_text: jax.Array
  keep_refs: jax.Array


def sample_cond_dropout(rng: jax.Array, batch_size: int, p_text: float, p_refs: float,
                        p_both: float) -> CondDropout:
  """Drops the text alone (p_text), the references alone (p_refs) or both (p_both).

  The three events are disjoint, so the probabilities are those of exactly that dropout.
  """
  if p_text + p_refs + p_both > 1:
    raise ValueError(f"condition dropout rates sum to {p_text + p_refs + p_both} > 1 "
                     f"(text {p_text}, refs {p_refs}, both {p_both}).")
  u = jax.random.uniform(rng, (batch_size,))
  drop_both = u < p_both
  drop_text = drop_both | ((u >= p_both) & (u < p_both + p_text))
  drop_refs = drop_both | ((u >= p_both + p_text) & (u < p_both + p_text + p_refs))
  return CondDropout(keep_text=~drop_text, keep_refs=~drop_refs)


def augment_references(schedule: Schedule, rng: jax.Array, refs: jax.Array,
                       max_level: int) -> tuple[jax.Array, jax.Array]:
  """Noises the conditioning copy of the references to a level s ~ U{0, …, max_level}.

  refs: [B, K, h, w, C] (one level per example, shared by its K frames).

  Returns:
    (noised refs [B, K, h, w, C], levels s [B] int32).
  """
  level_rng, noise_rng = jax.random.split(rng)
  levels = jax.random.randint(level_rng, (refs.shape[0],), 0, max_level + 1)
  noise = jax.random.normal(noise_rng, refs.shape, refs.dtype)
  b, k = refs.shape[:2]
  flat = lambda a: a.reshape((b * k,) + a.shape[2:])
  noised = q_sample(schedule, flat(refs), jnp.repeat(levels, k), flat(noise))
  return noised.reshape(refs.shape), levels


class LossAux(NamedTuple):
  """Diagnostics of one loss evaluation, each averaged over the batch."""
  mask_mean: jax.Array  # mean M over examples that kept their references
  mask: jax.Array  # [B, h, w, 1], for pictures
  unmasked_loss: jax.Array  # ‖target − output‖² without the mask: what the network alone does


def masked_diffusion_loss(
    predict: Callable[..., tuple[jax.Array, jax.Array]],
    schedule: Schedule,
    rng: jax.Array,
    target: jax.Array,
    refs: jax.Array,
    anchor: jax.Array,
    text: jax.Array,
    null_text: jax.Array,
    *,
    prediction_type: str,
    max_ref_noise_level: int,
    p_drop_text: float,
    p_drop_refs: float,
    p_drop_both: float,
    unmasked_loss_weight: float = 0.0,
) -> tuple[jax.Array, LossAux]:
  """The ART·V training loss for one batch.

  Args:
    predict: ``predict(x_t, t, text, refs, anchor, ref_noise_level, keep_refs)`` returning
      (output [B, h, w, C], mask [B, h, w, 1]); the ART·V network with its params bound. It
      must return M ≡ 1 where ``keep_refs`` is False.
    schedule: noise schedule.
    rng: PRNG key.
    target: [B, h, w, C] latent of the frame to generate.
    refs: [B, K, h, w, C] latents of the K previous frames, refs[:, 0] the nearest.
    anchor: [B, h, w, C] latent of the anchor (first) frame.
    text: [B, S, D] text encoder states of the captions.
    null_text: [S, D] text encoder states of the empty prompt (dropped text).
    prediction_type: 'epsilon' or 'v_prediction'.
    max_ref_noise_level: s_max of the reference noise augmentation (0 turns it off).
    p_drop_text, p_drop_refs, p_drop_both: condition dropout rates.
    unmasked_loss_weight: weight of ‖target − output‖² (the network's own prediction, no
      mask) added to the loss. For training from scratch: the masked loss scales the
      network's gradient by M, and M closes wherever the reference is the better guess,
      which before the network has learned anything is everywhere, where the frame changes
      too.

  Returns:
    (scalar loss, LossAux).
  """
  t_rng, noise_rng, drop_rng, aug_rng = jax.random.split(rng, 4)
  b = target.shape[0]
  t = jax.random.randint(t_rng, (b,), 0, schedule.num_train_steps)
  noise = jax.random.normal(noise_rng, target.shape, target.dtype)
  x_t = q_sample(schedule, target, t, noise)

  keep = sample_cond_dropout(drop_rng, b, p_drop_text, p_drop_refs, p_drop_both)
  text = jnp.where(keep.keep_text[:, None, None], text, null_text[None].astype(text.dtype))
  # The anchor rides the reference pathway, so it is augmented with the same noise level.
  cond = jnp.concatenate([refs, anchor[:, None]], axis=1)
  cond, levels = augment_references(schedule, aug_rng, cond, max_ref_noise_level)
  output, mask = predict(x_t, t, text, cond[:, :-1], cond[:, -1], levels, keep.keep_refs)

  goal = prediction_target(schedule, target, t, noise, prediction_type)
  prediction = masked_prediction(schedule, output, mask, x_t, refs[:, 0], t, prediction_type)
  unmasked_loss = jnp.mean(jnp.square(goal - output))
  loss = jnp.mean(jnp.square(goal - prediction)) + unmasked_loss_weight * unmasked_loss
  kept = keep.keep_refs.astype(jnp.float32)
  mask_mean = jnp.sum(jnp.mean(mask, axis=(1, 2, 3)) * kept) / jnp.maximum(jnp.sum(kept), 1.0)
  return loss, LossAux(mask_mean=mask_mean, mask=mask, unmasked_loss=unmasked_loss)
