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

:func:`generate_video` drives the chunks: each is decoded and written as soon as it arrives
(memory is flat in the length of the video) and the carry is saved beside the video after each
written chunk. :func:`sample_reference` is the same sampler as a plain Python loop over a
jitted denoising step, for tests and benchmarks.
"""
import bisect
import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import struct
from tqdm import tqdm

from artv_jax.diffusion.ddim import ddim_step, ddim_timesteps
from artv_jax.diffusion.dpm_solver import dpm_solver_init, dpm_solver_step, dpm_solver_timesteps
from artv_jax.diffusion.guidance import dual_cfg
from artv_jax.diffusion.masked_loss import masked_prediction
from artv_jax.diffusion.schedule import Schedule, q_sample
from artv_jax.models.artv import ARTV

SAMPLERS = ("ddim", "dpm_solver")
BRANCHES = (0, 1, 2)  # (∅,∅), (R,∅), (R,c), batched into one ART·V call per denoising step
RESUME_FILE = "resume.npz"
JSON_FILE = "sample.json"


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
               timestep_spacing=sample.get("timestep_spacing", "trailing"),
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


_jitted_denoise_step = jax.jit(denoise_step, static_argnums=(0, 3))


def sample_reference(model: ARTV, params: Any, schedule: Schedule, settings: SamplerSettings,
                     prompts: PromptTable, rng: jax.Array, num_frames: int,
                     latent_shape: Sequence[int],
                     given_latents: Optional[jax.Array] = None) -> jax.Array:
  """The sampler as a plain Python loop over frames and over a jitted denoising step.

  Same randomness as :func:`sample_chunk`; kept deliberately simple (a list of frames, Python
  prompt lookup) so that it checks the scan's bookkeeping, and times the Python-loop
  alternative in benchmarks/sampler.py.

  Returns:
    latents [num_frames, h, w, C], the given ones first.
  """
  starts = [int(s) for s in prompts.starts]
  frames = [] if given_latents is None else list(jnp.asarray(given_latents, jnp.float32))
  anchor = frames[0] if frames else jnp.zeros(tuple(latent_shape), jnp.float32)
  k = model.num_ref_frames
  timesteps, next_timesteps = settings.timesteps(schedule.num_train_steps)
  for i in range(len(frames), num_frames):
    noise_rng, aug_rng, step_rng = frame_rngs(rng, i)
    if frames:
      refs = jnp.stack([frames[max(len(frames) - 1 - j, 0)] for j in range(k)])
    else:
      refs = jnp.zeros((k,) + anchor.shape, jnp.float32)
    text = prompts.text[bisect.bisect_right(starts, i) - 1]
    inputs = frame_inputs(schedule, settings, text, prompts.null_text, refs, anchor,
                          jnp.asarray(not frames), aug_rng)
    x = jax.random.normal(noise_rng, anchor.shape, jnp.float32)
    solver_state = solver_init(settings, x)
    for n, (t, t_next) in enumerate(zip(timesteps, next_timesteps)):
      x, solver_state, _ = _jitted_denoise_step(model, params, schedule, settings, inputs, x,
                                                solver_state, jnp.int32(t), jnp.int32(t_next),
                                                jax.random.fold_in(step_rng, n))
    if not frames or (settings.reset_anchor_on_prompt_change and i in starts[1:]):
      anchor = x
    frames.append(x)
  return jnp.stack(frames)


# --------------------------------------------------------------------------------------------
# Whole videos: chunks -> decoded frames -> files, resumable.


class LatentCodec(NamedTuple):
  """Frames <-> latents. encode: [N, H, W, 3] in [-1, 1] -> [N, h, w, C] (scaled as the UNet
  sees them); decode: the inverse. Both jitted."""
  encode: Callable[[jax.Array], jax.Array]
  decode: Callable[[jax.Array], jax.Array]


def latent_codec(vae=None, vae_params: Any = None, batch_size: int = 4) -> LatentCodec:
  """The SD VAE as a codec (posterior mode; ``batch_size`` frames at a time, to bound memory),
  or, with ``vae=None``, the identity: pixel-space models whose latents are the frames."""
  if vae is None:
    identity = jax.jit(lambda x: jnp.asarray(x, jnp.float32))
    return LatentCodec(identity, identity)
  shift = vae.shift_factor or 0.0

  def encode_one(frame):
    posterior = vae.apply({"params": vae_params}, frame[None], method="encode")
    return ((posterior.mode() - shift) * vae.scaling_factor)[0]

  def decode_one(latent):
    z = latent[None] / vae.scaling_factor + shift
    return vae.apply({"params": vae_params}, z, method="decode")[0]

  return LatentCodec(
      jax.jit(lambda x: jax.lax.map(encode_one, x, batch_size=batch_size)),
      jax.jit(lambda z: jax.lax.map(decode_one, z, batch_size=batch_size)))


class VideoResult(NamedTuple):
  """What :func:`generate_video` wrote."""
  video: str  # video.mp4
  gif: str  # video.gif
  contact_sheet: str  # contact_sheet.png
  json: str  # sample.json: prompt schedule and sampler settings
  num_frames: int  # frames in the video so far
  complete: bool  # False when stopped early by max_chunks (resume to finish)


def save_carry(path: str, carry: Carry, fingerprint: str) -> None:
  """Writes the carry as .npz atomically, with the settings it is valid for."""
  tmp = path + ".tmp.npz"
  np.savez(tmp, refs=np.asarray(carry.refs), anchor=np.asarray(carry.anchor),
           rng=np.asarray(jax.random.key_data(carry.rng)), frame=np.asarray(carry.frame),
           fingerprint=np.asarray(fingerprint))
  os.replace(tmp, path)


def load_carry(path: str, fingerprint: str) -> Carry:
  """Reads a carry saved by :func:`save_carry`; raises if it was made with other settings."""
  with np.load(path) as f:
    saved = str(f["fingerprint"])
    if saved != fingerprint:
      raise ValueError(
          f"{path} belongs to a video generated with other settings:\n  saved:   {saved}\n"
          f"  current: {fingerprint}\nuse the same settings (num_frames may grow), another "
          "output directory, or resume=False to start over.")
    return Carry(refs=jnp.asarray(f["refs"]), anchor=jnp.asarray(f["anchor"]),
                 rng=jax.random.wrap_key_data(jnp.asarray(f["rng"])),
                 frame=jnp.asarray(f["frame"], jnp.int32))


def _fingerprint(settings: SamplerSettings, prompts: Sequence[Sequence[Any]], seed: int,
                 latent_shape: Sequence[int], given_frames: Optional[np.ndarray]) -> str:
  """What a saved carry must agree on to continue the same video."""
  given = None
  if given_frames is not None:
    given = hashlib.sha1(np.ascontiguousarray(given_frames).tobytes()).hexdigest()[:16]
  return json.dumps({"settings": dataclasses.asdict(settings),
                     "prompts": [[int(s), str(p)] for s, p in prompts], "seed": seed,
                     "latent_shape": list(latent_shape), "given_frames": given},
                    sort_keys=True)


def generate_video(model: ARTV, params: Any, schedule: Schedule,
                   sample: ml_collections.ConfigDict, out_dir: str, *,
                   encode_text: Callable[[list[str]], Any], codec: LatentCodec,
                   latent_shape: Sequence[int], seed: int = 0,
                   given_frames: Optional[np.ndarray] = None, resume: bool = True,
                   max_chunks: Optional[int] = None, progress: bool = True,
                   on_frames: Optional[Callable[[int, np.ndarray], None]] = None
                   ) -> VideoResult:
  """Generates a video and writes video.mp4, video.gif, contact_sheet.png and sample.json.

  The mode follows from ``given_frames``: None is text-to-video (frame 0 from the model with
  the references dropped); one frame is image-to-video (text + image; an empty prompt for the
  image alone); several frames are the continuation of that video. Given frames are the start
  of the output video.

  Chunks of ``sample.chunk_frames`` frames are generated by one compiled program, decoded and
  written as they arrive, and the carry is saved to ``out_dir/resume.npz`` after each. With
  ``resume`` a later call with the same settings (``num_frames`` may grow) continues from the
  last written chunk and gives the same video as an uninterrupted run.

  Args:
    model, params: the ART·V network and its parameters (e.g. the EMA).
    schedule: the noise schedule it was trained with.
    sample: ``config.sample`` (configs/base.py): num_frames, num_steps, sampler, eta,
      text_scale, ref_scale, ref_noise_level, chunk_frames, reset_anchor_on_prompt_change,
      prompts, fps; optional timestep_spacing ('trailing'), contact_sheet_every (0: about 48
      tiles), upscale (0: enlarge frames below 128 pixels by nearest-neighbour).
    out_dir: where the files go (created).
    encode_text: list of P strings -> [P, S, D] text states, e.g.
      ``lambda p: text_encoder.apply({'params': tp}, tokenize(tokenizer, p))``.
    codec: :func:`latent_codec` of the VAE (or of None for pixel-space models).
    latent_shape: (h, w, C) of one frame's latent.
    seed: seed of the video's randomness.
    given_frames: [N, H, W, 3] uint8 frames the video starts with, or None.
    resume: continue from ``out_dir/resume.npz`` if it exists (else start over).
    max_chunks: stop after this many chunks (the rest can be resumed); None: finish.
    progress: show a progress bar with frames/s.
    on_frames: called as ``on_frames(first frame, frames [n, H, W, 3] uint8)`` with each
      generated chunk, in order, as written but before the upscaling and the lossy video
      encoding (metrics read these). Given frames and frames before a resume are not passed.

  Returns:
    VideoResult.
  """
  from artv_jax import video_writer  # ffmpeg: only where files are written.
  settings = SamplerSettings.from_config(sample, schedule.prediction_type)
  num_frames, chunk_frames = int(sample.num_frames), int(sample.chunk_frames)
  prompts = sample.prompts
  table = encode_prompts(encode_text, prompts)
  if given_frames is not None:
    given_frames = np.asarray(given_frames)
    if given_frames.ndim != 4 or given_frames.dtype != np.uint8:
      raise ValueError(f"given_frames must be uint8 [N, H, W, 3], got {given_frames.dtype} "
                       f"{list(given_frames.shape)}")
    if num_frames <= len(given_frames):
      raise ValueError(f"sample.num_frames={num_frames} leaves nothing to generate after the "
                       f"{len(given_frames)} given frames; raise it.")
  os.makedirs(out_dir, exist_ok=True)
  fingerprint = _fingerprint(settings, prompts, seed, latent_shape, given_frames)
  state_path = os.path.join(out_dir, RESUME_FILE)

  height, width = jax.eval_shape(
      codec.decode, jax.ShapeDtypeStruct((1,) + tuple(latent_shape), jnp.float32)).shape[1:3]
  factor = int(sample.get("upscale", 0)) or max(1, math.ceil(128 / min(height, width)))
  fps = float(sample.fps)

  if resume and os.path.exists(state_path):
    carry = load_carry(state_path, fingerprint)
    if int(carry.frame) > num_frames:
      raise ValueError(f"the video in {out_dir} already has {int(carry.frame)} frames, more "
                       f"than sample.num_frames={num_frames}; raise it, or use resume=False "
                       "to start over.")
    video_writer.discard_segments(out_dir, int(carry.frame))
  else:
    video_writer.discard_segments(out_dir)
    rng = jax.random.key(seed)
    if given_frames is None:
      carry = initial_carry(latent_shape, model.num_ref_frames, rng)
    else:
      if given_frames.shape[1:3] != (height, width):
        raise ValueError(f"given frames are {given_frames.shape[1]}x{given_frames.shape[2]}, "
                         f"the model makes {height}x{width}; resize them.")
      pixels = jnp.asarray(given_frames, jnp.float32) / 127.5 - 1.0
      carry = carry_from_latents(codec.encode(pixels), model.num_ref_frames, rng)
      video_writer.write_segment(out_dir, 0, video_writer.upscale(given_frames, factor), fps)
      save_carry(state_path, carry, fingerprint)
  start = int(carry.frame)

  info = {"prompts": [[int(s), str(p)] for s, p in prompts], "num_frames": num_frames,
          "fps": fps, "seed": seed,
          "mode": ("text_to_video" if given_frames is None else
                   "image_to_video" if len(given_frames) == 1 else "continuation"),
          "given_frames": 0 if given_frames is None else len(given_frames),
          "sampler": dataclasses.asdict(settings), "chunk_frames": chunk_frames,
          "timesteps": settings.timesteps(schedule.num_train_steps)[0].tolist(),
          "latent_shape": list(latent_shape), "frame_size": [height, width],
          "upscale": factor}
  json_path = os.path.join(out_dir, JSON_FILE)
  video_writer.write_json(json_path, {**info, "frames_written": start, "complete": False})

  chunk_starts = list(range(start, num_frames, chunk_frames))[:max_chunks]
  end = jnp.asarray(num_frames, jnp.int32)
  bar = tqdm(total=num_frames, initial=start, unit="frame", disable=not progress,
             dynamic_ncols=True)
  written = start

  def write(first: int, frames: jax.Array, carry: Carry, mask_means: jax.Array) -> int:
    n = min(chunk_frames, num_frames - first)
    pixels = video_writer.to_uint8(frames[:n])
    if on_frames is not None:
      on_frames(first, pixels)
    video_writer.write_segment(out_dir, first, video_writer.upscale(pixels, factor), fps)
    save_carry(state_path, carry, fingerprint)  # after the segment: it is on disk
    bar.update(n)
    bar.set_postfix(mask=f"{float(jnp.mean(mask_means[:n])):.3f}")
    return first + n

  # The next chunk is dispatched before the previous one is written, so the accelerator works
  # while the host encodes video.
  pending = None
  t0 = time.perf_counter()
  for first in chunk_starts:
    carry, latents, mask_means = sample_chunk(model, params, schedule, settings, table, carry,
                                              end, num_frames=chunk_frames)
    frames = codec.decode(latents)
    if pending is not None:
      written = write(*pending)
    pending = (first, frames, carry, mask_means)
  if pending is not None:
    written = write(*pending)
  bar.close()
  if written > start:
    logging.info("generated frames %d-%d in %.1fs", start, written - 1,
                 time.perf_counter() - t0)

  every = int(sample.get("contact_sheet_every", 0)) or max(1, math.ceil(written / 48))
  paths = video_writer.finalize_video(out_dir, fps, every)
  complete = written == num_frames
  video_writer.write_json(json_path, {**info, "frames_written": written, "complete": complete,
                                      "contact_sheet_every": every,
                                      "files": {k: os.path.basename(v) for k, v in paths.items()}})
  return VideoResult(paths["video"], paths["gif"], paths["contact_sheet"], json_path, written,
                     complete)
