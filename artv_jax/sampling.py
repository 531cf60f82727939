"""Sampling an arbitrarily long ART·V video, one frame at a time (METHOD.md "Sampling").

One compiled program generates a chunk of frames:

    sample_chunk: lax.scan over the chunk's frames, carry = Carry(refs, anchor, rng, frame)
      frame i:  prompt p(i) = the schedule entry whose range holds i
                references (last K latents) + anchor, noise-augmented to level s
                x_T ~ N(0, I); lax.scan over the denoising steps:
                  ART·V on a batch of 3 branches   (∅,∅)  (R,∅)  (R,c)
                  each branch mixed with its mask: M ⊙ output + (1 − M) ⊙ ε_ref(z^{i-1})
                  dual guidance, then a DDIM or DPM-Solver++(2M) step
                z^i = x_0;  refs <- (z^i, refs[:-1])

Frame 0 of a text-to-video sample comes from the same program with the references dropped in
every branch, which turns dual guidance into plain text guidance of the T2I model. The prompts
are encoded once into a table [P, S, D] and indexed by the frame number in the carry. Every
frame's randomness is ``fold_in(rng, frame)``, so a video does not depend on how it is cut
into chunks, and a run resumed from a saved carry equals an uninterrupted one.

These functions are pure and jitted; `generate.py` drives them (chunks -> decoded frames ->
files, resumable) and `tests/reference_sampler.py` checks them against a plain Python loop.
"""
import dataclasses
import functools
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct

from artv_jax.diffusion.ddim import ddim_step, ddim_timesteps
from artv_jax.diffusion.dpm_solver import dpm_solver_init, dpm_solver_step, dpm_solver_timesteps
from artv_jax.diffusion.guidance import dual_cfg
from artv_jax.diffusion.masked_loss import masked_prediction
from artv_jax.diffusion.schedule import Schedule, q_sample
from artv_jax.models.artv import ARTV

SAMPLERS = ("ddim", "dpm_solver")
BRANCHES = (0, 1, 2)  # (∅,∅), (R,∅), (R,c), batched into one ART·V call per denoising step


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
  """Everything that fixes the compiled sampler, apart from shapes (hashable: a static arg).

  Attributes:
    num_steps: denoising steps per frame.
    sampler: 'ddim' or 'dpm_solver' (DPM-Solver++(2M), deterministic).
    eta: DDIM stochasticity (0: deterministic); must be 0 for 'dpm_solver'.
    text_scale: s_txt of dual guidance.
    ref_scale: s_ref of dual guidance.
    ref_noise_level: s, the noise level of the references and the anchor at sampling time.
    reset_anchor_on_prompt_change: at each prompt's start frame (after the first prompt), that
      frame is generated as usual (references = the previous frames, text = the new prompt),
      and then becomes the anchor of the frames after it. The video stays continuous through
      the change, and the old anchor no longer pulls later frames back to the old prompt.
    timestep_spacing: 'trailing' (starts at t = T − 1, from pure noise: best with few steps),
      'leading' or 'linspace'.
    prediction_type: what the network predicts, 'epsilon' or 'v_prediction'.
    clip_x0: clip each step's x̂0 to [-1, 1]: for pixel-space models, whose frames live there
      (guidance pushes x̂0 past the range, and the overshoot compounds from frame to frame).
  """
  num_steps: int
  sampler: str = "ddim"
  eta: float = 0.0
  text_scale: float = 7.5
  ref_scale: float = 1.5
  ref_noise_level: int = 50
  reset_anchor_on_prompt_change: bool = False
  timestep_spacing: str = "trailing"
  prediction_type: str = "epsilon"
  clip_x0: bool = False

  def __post_init__(self):
    if self.sampler not in SAMPLERS:
      raise ValueError(f"sampler '{self.sampler}' is not one of {SAMPLERS}.")
    if self.sampler == "dpm_solver" and self.eta != 0:
      raise ValueError(f"eta={self.eta}: DPM-Solver++(2M) is deterministic; set eta to 0 or "
                       "use sampler='ddim'.")

  @classmethod
  def from_config(cls, sample: ml_collections.ConfigDict,
                  prediction_type: str) -> "SamplerSettings":
    """Settings from a ``config.sample`` ConfigDict (configs/base.py)."""
    return cls(num_steps=sample.num_steps, sampler=sample.sampler, eta=float(sample.eta),
               text_scale=float(sample.text_scale), ref_scale=float(sample.ref_scale),
               ref_noise_level=int(sample.ref_noise_level),
               reset_anchor_on_prompt_change=bool(sample.reset_anchor_on_prompt_change),
               timestep_spacing=sample.timestep_spacing,
               prediction_type=prediction_type, clip_x0=bool(sample.clip_x0))

  def timesteps(self, num_train_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps, the timestep each step moves to), [num_steps] int32 each."""
    if self.sampler == "ddim":
      return ddim_timesteps(num_train_steps, self.num_steps, self.timestep_spacing)
    return dpm_solver_timesteps(num_train_steps, self.num_steps, self.timestep_spacing)

  @property
  def branches(self) -> tuple[int, ...]:
    """The guidance branches the network evaluates: with s_ref = 1, ε(∅,∅) cancels out of
    dual guidance (ε(R,∅) + s_txt·(ε(R,c) − ε(R,∅))), so its third of the work is skipped."""
    return BRANCHES[1:] if self.ref_scale == 1 else BRANCHES


@struct.dataclass
class PromptTable:
  """The prompt schedule, encoded once per video.

  Attributes:
    text: [P, S, D] text states of the P prompts.
    null_text: [S, D] text states of the empty prompt (the guidance's dropped text).
    starts: [P] int32 first frame of each prompt, increasing, starts[0] = 0.
  """
  text: jax.Array
  null_text: jax.Array
  starts: jax.Array


@struct.dataclass
class Carry:
  """What frame i needs from frames 0..i-1: all the state of a video in progress.

  Attributes:
    refs: [K, h, w, C] clean latents of the last K frames, nearest first (zeros before frame 0;
      the earliest frame repeated while fewer than K exist).
    anchor: [h, w, C] clean latent of the anchor frame (zeros before frame 0).
    rng: PRNG key of the video; frame i draws from ``fold_in(rng, i)`` only.
    frame: [] int32 index of the next frame to generate.
  """
  refs: jax.Array
  anchor: jax.Array
  rng: jax.Array
  frame: jax.Array


@struct.dataclass
class FrameInputs:
  """The conditioning of one frame for the guidance branches, fixed over its steps.

  N is ``len(settings.branches)``: 3 for (∅,∅), (R,∅), (R,c), or 2 without (∅,∅).

  Attributes:
    text: [N, S, D] null, null, prompt.
    refs: [N, K, h, w, C] noise-augmented references.
    anchor: [N, h, w, C] noise-augmented anchor.
    ref_noise_level: [N] int32 s.
    keep_refs: [N] bool: False, True, True (all False for a text-to-image frame).
    z_ref: [N, h, w, C] the clean previous latent: the mask's copy source.
  """
  text: jax.Array
  refs: jax.Array
  anchor: jax.Array
  ref_noise_level: jax.Array
  keep_refs: jax.Array
  z_ref: jax.Array


def parse_prompts(prompts: Sequence[Sequence[Any]]) -> tuple[list[int], list[str]]:
  """((start frame, prompt), ...) -> (starts, texts), checked: increasing starts from 0."""
  try:
    starts = [int(start) for start, _ in prompts]
    texts = [str(text) for _, text in prompts]
  except (TypeError, ValueError) as e:
    raise ValueError(f"prompts must be (start_frame, prompt) pairs, got {prompts!r}") from e
  if not starts or starts[0] != 0 or any(a >= b for a, b in zip(starts, starts[1:])):
    raise ValueError(f"prompt start frames {starts} must be strictly increasing and begin at 0 "
                     "(every frame needs a prompt).")
  return starts, texts


def prompt_schedule(sample: ml_collections.ConfigDict) -> tuple[tuple[int, str], ...]:
  """``sample.prompts``, or ``sample.prompts_text`` where set: 'PROMPT', or
  'FRAME:PROMPT;FRAME:PROMPT;...' (a form the command line can give)."""
  if not sample.prompts_text:
    return tuple((int(start), str(text)) for start, text in sample.prompts)
  entries = [entry.strip() for entry in sample.prompts_text.split(";") if entry.strip()]
  if len(entries) == 1 and not re.match(r"\d+\s*:", entries[0]):
    return ((0, entries[0]),)
  schedule = []
  for entry in entries:
    start, sep, text = entry.partition(":")
    if not sep or not start.strip().isdigit():
      raise ValueError(f"sample.prompts_text: {entry!r} is not FRAME:PROMPT (entries are "
                       "separated by ';', e.g. '0:a red circle;8:a blue square')")
    schedule.append((int(start), text.strip()))
  return tuple(schedule)


def encode_prompts(encode_text: Callable[[list[str]], Any],
                   prompts: Sequence[Sequence[Any]]) -> PromptTable:
  """Encodes the schedule's prompts and the empty prompt in one call of
  ``encode_text(list of P + 1 strings) -> [P + 1, S, D]``."""
  starts, texts = parse_prompts(prompts)
  states = jnp.asarray(encode_text(texts + [""]), jnp.float32)
  return PromptTable(text=states[:-1], null_text=states[-1],
                     starts=jnp.asarray(starts, jnp.int32))


def prompt_index(starts: jax.Array, frame: jax.Array) -> jax.Array:
  """Index of the prompt whose range [starts[p], starts[p + 1]) holds frame."""
  return jnp.sum(starts <= frame) - 1


def frame_rngs(rng: jax.Array, frame: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(initial noise, reference augmentation, per-step noise) keys of a frame: a function of
  (video rng, frame index) alone."""
  noise_rng, aug_rng, step_rng = jax.random.split(jax.random.fold_in(rng, frame), 3)
  return noise_rng, aug_rng, step_rng


def initial_carry(latent_shape: Sequence[int], num_ref_frames: int, rng: jax.Array) -> Carry:
  """The carry of a text-to-video sample: no frame yet (frame 0 will be made by T2I)."""
  zeros = jnp.zeros(tuple(latent_shape), jnp.float32)
  return Carry(refs=jnp.zeros((num_ref_frames,) + zeros.shape, jnp.float32), anchor=zeros,
               rng=rng, frame=jnp.zeros((), jnp.int32))


def carry_from_latents(latents: jax.Array, num_ref_frames: int, rng: jax.Array) -> Carry:
  """The carry after given frames: one image (image-to-video) or a video (continuation).

  latents: [N, h, w, C]; its last K frames become the references, its first the anchor, and
  generation continues at frame N.
  """
  latents = jnp.asarray(latents, jnp.float32)
  n = latents.shape[0]
  nearest_first = latents[::-1][jnp.minimum(jnp.arange(num_ref_frames), n - 1)]
  return Carry(refs=nearest_first, anchor=latents[0], rng=rng,
               frame=jnp.asarray(n, jnp.int32))


def frame_inputs(schedule: Schedule, settings: SamplerSettings, text: jax.Array,
                 null_text: jax.Array, refs: jax.Array, anchor: jax.Array,
                 text_to_image: jax.Array, rng: jax.Array) -> FrameInputs:
  """The conditioning of the branches ``settings.branches`` for one frame.

  Args:
    text, null_text: [S, D] states of the frame's prompt and of the empty prompt.
    refs: [K, h, w, C] clean previous latents, nearest first; anchor: [h, w, C].
    text_to_image: [] bool, drop references in every branch (frame 0 of text-to-video).
    rng: key of the noise augmentation.
  """
  # The anchor rides the reference pathway, so it is noised like the references (as in
  # training, where it shares their level).
  cond = jnp.concatenate([refs, anchor[None]], axis=0)
  level = jnp.asarray(settings.ref_noise_level, jnp.int32)
  cond = q_sample(schedule, cond, level, jax.random.normal(rng, cond.shape, cond.dtype))
  branches = np.asarray(settings.branches)
  batch = lambda a: jnp.broadcast_to(a, (len(branches),) + a.shape)
  return FrameInputs(
      text=jnp.stack([null_text, null_text, text])[branches],
      refs=batch(cond[:-1]), anchor=batch(cond[-1]),
      ref_noise_level=jnp.full((len(branches),), level),
      keep_refs=jnp.array([False, True, True])[branches] & ~text_to_image,
      z_ref=batch(refs[0]))


def guided_prediction(model: ARTV, params: Any, schedule: Schedule, settings: SamplerSettings,
                      inputs: FrameInputs, x_t: jax.Array,
                      t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Dual-guided masked prediction (ε̂ or v̂) at one step.

  x_t: [h, w, C]; t: [] int -> (prediction [h, w, C], mask of the (R, c) branch [h, w, 1]).
  """
  n = len(settings.branches)
  x_n = jnp.broadcast_to(x_t, (n,) + x_t.shape)
  t_n = jnp.full((n,), t, jnp.int32)
  output, mask = model.apply({"params": params}, x_n, t_n, inputs.text, inputs.refs,
                             inputs.anchor, inputs.ref_noise_level, inputs.keep_refs)
  pred = masked_prediction(schedule, output, mask, x_n, inputs.z_ref, t_n,
                           settings.prediction_type)
  # Without the (∅,∅) branch, ε(R,∅) stands in for it: its s_ref = 1 term is then zero.
  none, ref, ref_text = pred if n == 3 else (pred[0], pred[0], pred[1])
  return dual_cfg(none, ref, ref_text, settings.ref_scale, settings.text_scale), mask[-1]


def solver_init(settings: SamplerSettings, x_t: jax.Array) -> Any:
  """The sampler's state before a frame's first step (DDIM has none)."""
  return dpm_solver_init(x_t) if settings.sampler == "dpm_solver" else None


def denoise_step(model: ARTV, params: Any, schedule: Schedule, settings: SamplerSettings,
                 inputs: FrameInputs, x_t: jax.Array, solver_state: Any, t: jax.Array,
                 t_next: jax.Array, rng: jax.Array) -> tuple[jax.Array, Any, jax.Array]:
  """One denoising step of one frame: x_t [h, w, C] at t -> (x at t_next, solver state,
  mask [h, w, 1] of the (R, c) branch)."""
  pred, mask = guided_prediction(model, params, schedule, settings, inputs, x_t, t)
  if settings.sampler == "ddim":
    noise = None if settings.eta == 0 else jax.random.normal(rng, x_t.shape, x_t.dtype)
    x_next, x0 = ddim_step(schedule, pred, t, t_next, x_t, eta=settings.eta, noise=noise,
                           prediction_type=settings.prediction_type,
                           clip_sample=settings.clip_x0)
    # The last step ends at x̂0, not at DDIM's x at ᾱ_0 < 1: that keeps sqrt(1 − ᾱ_0) ≈ 3% of
    # noise, which the next frame copies from its reference, so it compounds over a video.
    x_next = jnp.where(t_next < 0, x0, x_next)
  else:
    x_next, solver_state = dpm_solver_step(schedule, solver_state, pred, t, t_next, x_t,
                                           prediction_type=settings.prediction_type,
                                           clip_sample=settings.clip_x0)
  return x_next, solver_state, mask


def advance(carry: Carry, latent: jax.Array, prompts: PromptTable,
            settings: SamplerSettings) -> Carry:
  """The carry after frame ``carry.frame`` came out as latent [h, w, C]."""
  i = carry.frame
  first = i == 0  # a text-to-video frame 0: it fills every reference slot and is the anchor
  shifted = jnp.concatenate([latent[None], carry.refs[:-1]], axis=0)
  refs = jnp.where(first, jnp.broadcast_to(latent, carry.refs.shape), shifted)
  new_anchor = first
  if settings.reset_anchor_on_prompt_change:
    new_anchor |= jnp.any(prompts.starts[1:] == i)
  anchor = jnp.where(new_anchor, latent, carry.anchor)
  return Carry(refs=refs, anchor=anchor, rng=carry.rng, frame=i + 1)


def sample_frame(model: ARTV, params: Any, schedule: Schedule, settings: SamplerSettings,
                 prompts: PromptTable, carry: Carry) -> tuple[Carry, jax.Array, jax.Array]:
  """Generates frame ``carry.frame``: -> (next carry, latent [h, w, C], final mean mask)."""
  noise_rng, aug_rng, step_rng = frame_rngs(carry.rng, carry.frame)
  text = prompts.text[prompt_index(prompts.starts, carry.frame)]
  inputs = frame_inputs(schedule, settings, text, prompts.null_text, carry.refs, carry.anchor,
                        carry.frame == 0, aug_rng)
  timesteps, next_timesteps = settings.timesteps(schedule.num_train_steps)
  x_t = jax.random.normal(noise_rng, carry.anchor.shape, jnp.float32)

  def step(state, xs):
    x, solver_state = state
    t, t_next, k = xs
    x, solver_state, mask = denoise_step(model, params, schedule, settings, inputs, x,
                                         solver_state, t, t_next, jax.random.fold_in(step_rng, k))
    return (x, solver_state), jnp.mean(mask)

  (latent, _), mask_means = jax.lax.scan(
      step, (x_t, solver_init(settings, x_t)),
      (jnp.asarray(timesteps), jnp.asarray(next_timesteps), jnp.arange(len(timesteps))))
  return advance(carry, latent, prompts, settings), latent, mask_means[-1]


@functools.partial(jax.jit, static_argnames=("model", "settings", "num_frames"))
def sample_chunk(model: ARTV, params: Any, schedule: Schedule, settings: SamplerSettings,
                 prompts: PromptTable, carry: Carry, end_frame: jax.Array, *,
                 num_frames: int) -> tuple[Carry, jax.Array, jax.Array]:
  """Generates frames carry.frame, ..., carry.frame + num_frames − 1, stopping at end_frame.

  Frames at or past ``end_frame`` (a traced int: the last chunk of a video is shorter) are
  skipped by a ``lax.cond``, costing nothing, and leave the carry unchanged; so one compiled
  program serves every chunk of every video with the same shapes.

  Returns:
    (carry after the chunk, latents [num_frames, h, w, C] (zeros for skipped frames),
     mean mask of each frame's last step [num_frames]).
  """
  def frame(carry, _):
    def generate(carry):
      return sample_frame(model, params, schedule, settings, prompts, carry)

    def skip(carry):
      return carry, jnp.zeros_like(carry.anchor), jnp.zeros((), jnp.float32)

    carry, latent, mask_mean = jax.lax.cond(carry.frame < end_frame, generate, skip, carry)
    return carry, (latent, mask_mean)

  carry, (latents, mask_means) = jax.lax.scan(frame, carry, length=num_frames)
  return carry, latents, mask_means


@functools.partial(jax.jit, static_argnames=("model", "settings", "num_frames"))
def sample_chunks(model: ARTV, params: Any, schedule: Schedule, settings: SamplerSettings,
                  prompts: PromptTable, carries: Carry, end_frame: jax.Array, *,
                  num_frames: int) -> tuple[Carry, jax.Array, jax.Array]:
  """:func:`sample_chunk` for V videos in step, one network call per denoising step for all.

  ``carries`` has a leading [V] axis on every field (e.g. ``jax.vmap(initial_carry)`` of V
  keys), all at the same frame; the videos share the prompt schedule. Each video equals the
  one :func:`sample_chunk` makes from its carry.

  Returns:
    (carries after the chunk, latents [V, num_frames, h, w, C], mask means [V, num_frames]).
  """
  def frame(carries, _):
    def generate(carries):
      return jax.vmap(lambda carry: sample_frame(model, params, schedule, settings, prompts,
                                                 carry))(carries)

    def skip(carries):
      return (carries, jnp.zeros_like(carries.anchor),
              jnp.zeros(carries.frame.shape, jnp.float32))

    # One frame index for all: a batched predicate would make the cond run both branches.
    carries, latents, mask_means = jax.lax.cond(carries.frame[0] < end_frame, generate, skip,
                                                carries)
    return carries, (latents, mask_means)

  carries, (latents, mask_means) = jax.lax.scan(frame, carries, length=num_frames)
  return carries, jnp.swapaxes(latents, 0, 1), jnp.swapaxes(mask_means, 0, 1)
