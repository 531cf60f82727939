"""Videos from a trained run: the driver of the jitted sampler (chunks -> frames -> files).

Used by ``python -m artv_jax.main --mode=sample``. Each run writes a folder of its own,
``WORKDIR/samples/NAME`` (``sample.run_name``, or the next free number):

    chunks/NNNNNNNN.mp4     the video, one segment per chunk of sample.chunk_frames frames
    carries/NNNNNNNN.npz    the sampler's carry at each chunk boundary (frame N comes next)
    video.mp4, video.gif, contact_sheet.png, sample.json

A run stopped early continues from its last carry (``sample.resume``), and gives the video an
uninterrupted run gives. ``sample.branch_from='RUN@FRAME'`` starts a new run from another
run's carry at chunk boundary FRAME: its first FRAME frames are that run's, the rest follow
this run's prompts. The mode follows ``sample.init``: empty is text-to-video; an image file is
image-to-video (text + image); a video file is the continuation of that video (its last frames
become the references, its first the anchor).
"""
import dataclasses
import hashlib
import io
import json
import math
import re
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from artv_jax import build
from artv_jax import parallel
from artv_jax import paths
from artv_jax import sampling
from artv_jax.checkpoints import training as training_checkpoints
from artv_jax.diffusion.schedule import Schedule
from artv_jax.models.artv import ARTV

CARRY_DIR = "carries"
JSON_FILE = "sample.json"
# Seconds the other processes wait for the writer to encode and join a video's files.
VIDEO_WAIT_S = 3600


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


def carry_path(out_dir: paths.PathLike, frame: int) -> epath.Path:
  """The carry saved at chunk boundary ``frame`` (the next frame to generate)."""
  return epath.Path(out_dir) / CARRY_DIR / f"{frame:08d}.npz"


def saved_carry_frames(out_dir: paths.PathLike) -> list[int]:
  """The chunk boundaries of ``out_dir`` with a saved carry, in order."""
  folder = epath.Path(out_dir) / CARRY_DIR
  if not folder.is_dir():
    return []
  return sorted(int(p.stem) for p in folder.iterdir() if re.fullmatch(r"\d{8}\.npz", p.name))


def host_carry(carry: sampling.Carry) -> dict[str, np.ndarray]:
  """The carry as numpy arrays on every process (a collective when it spans processes)."""
  return parallel.fetch({"refs": carry.refs, "anchor": carry.anchor,
                         "rng": jax.random.key_data(carry.rng), "frame": carry.frame})


def save_carry(path: paths.PathLike, carry: dict[str, np.ndarray], fingerprint: str) -> None:
  """Writes a :func:`host_carry` as .npz atomically, with the settings it is valid for."""
  npz = io.BytesIO()
  np.savez(npz, **carry, fingerprint=np.asarray(fingerprint))
  paths.write_atomic(path, npz.getvalue())


def load_carry(path: paths.PathLike, fingerprint: Optional[str] = None) -> sampling.Carry:
  """Reads a carry saved by :func:`save_carry`; with ``fingerprint``, raises if it was made
  with other settings."""
  with np.load(io.BytesIO(epath.Path(path).read_bytes())) as f:
    saved = str(f["fingerprint"])
    if fingerprint is not None and saved != fingerprint:
      raise ValueError(
          f"{path} belongs to a video generated with other settings:\n  saved:   {saved}\n"
          f"  current: {fingerprint}\nuse the same settings (num_frames may grow), or sample "
          "into a new run (without sample.resume).")
    return sampling.Carry(refs=jnp.asarray(f["refs"]), anchor=jnp.asarray(f["anchor"]),
                          rng=jax.random.wrap_key_data(jnp.asarray(f["rng"])),
                          frame=jnp.asarray(f["frame"], jnp.int32))


def _fingerprint(settings: sampling.SamplerSettings, prompts: Sequence[Sequence[Any]],
                 seed: int, latent_shape: Sequence[int],
                 given_frames: Optional[np.ndarray]) -> str:
  """What a saved carry must agree on to continue the same video."""
  given = None
  if given_frames is not None:
    given = hashlib.sha1(np.ascontiguousarray(given_frames).tobytes()).hexdigest()[:16]
  return json.dumps({"settings": dataclasses.asdict(settings),
                     "prompts": [[int(s), str(p)] for s, p in prompts], "seed": seed,
                     "latent_shape": list(latent_shape), "given_frames": given},
                    sort_keys=True)


def parse_branch(branch_from: str, samples_dir: paths.PathLike) -> tuple[epath.Path, int]:
  """'RUN@FRAME' (RUN a run folder, or its name under ``samples_dir``) -> (folder, frame)."""
  run, sep, frame = branch_from.rpartition("@")
  if not sep or not run or not frame.isdigit():
    raise ValueError(f"sample.branch_from={branch_from!r} is not RUN@FRAME (a run folder or "
                     "its name under WORKDIR/samples, and a chunk boundary, e.g. 000@48)")
  folder = epath.Path(run) if "/" in run else epath.Path(samples_dir) / run
  frames = saved_carry_frames(folder)
  if int(frame) not in frames:
    raise ValueError(f"sample.branch_from={branch_from!r}: {folder} has no carry at frame "
                     f"{frame}; its chunk boundaries are {frames or 'none (not a run folder?)'}")
  return folder, int(frame)


def _start_branch(out_dir: epath.Path, source: epath.Path, frame: int) -> None:
  """Copies the segments of ``source`` before ``frame`` into ``out_dir``."""
  from artv_jax import video_writer  # pylint: disable=g-import-not-at-top
  for first, segment in video_writer.list_segments(str(source)):
    if first < frame:
      paths.copy_tree(segment, video_writer.segment_path(str(out_dir), first))


def generate_video(model: ARTV, params: Any, schedule: Schedule,
                   sample: ml_collections.ConfigDict, out_dir: paths.PathLike, *,
                   encode_text: Callable[[list[str]], Any], codec: LatentCodec,
                   latent_shape: Sequence[int], seed: int = 0,
                   given_frames: Optional[np.ndarray] = None, resume: bool = True,
                   branch_from: Optional[tuple[paths.PathLike, int]] = None,
                   max_chunks: Optional[int] = None, progress: bool = True,
                   on_frames: Optional[Callable[[int, np.ndarray], None]] = None,
                   writer: Optional[bool] = None) -> VideoResult:
  """Generates a video into ``out_dir``: chunks/, carries/, video.mp4, video.gif,
  contact_sheet.png and sample.json.

  The mode follows ``given_frames``: None is text-to-video (frame 0 from the model with
  the references dropped); one frame is image-to-video (text + image; an empty prompt for the
  image alone); several frames are the continuation of that video. Given frames are the start
  of the output video.

  Chunks of ``sample.chunk_frames`` frames are generated by one compiled program, decoded and
  written as they arrive, and the carry is saved after each. With ``resume`` a later call with
  the same settings (``num_frames`` may grow) continues from the last saved carry and gives
  the same video as an uninterrupted run.

  Args:
    model, params: the ART·V network and its parameters (e.g. the EMA).
    schedule: the noise schedule it was trained with.
    sample: ``config.sample`` (configs/base.py).
    out_dir: the run's folder (created; local or remote).
    encode_text: list of P strings -> [P, S, D] text states, e.g.
      ``lambda p: text_encoder.apply({'params': tp}, tokenize(tokenizer, p))``.
    codec: :func:`latent_codec` of the VAE (or of None for pixel-space models).
    latent_shape: (h, w, C) of one frame's latent.
    seed: seed of the video's randomness.
    given_frames: [N, H, W, 3] uint8 frames the video starts with, or None.
    resume: continue from the last carry in ``out_dir`` if there is one (else start over).
    branch_from: (run folder, chunk boundary F): start from that run's carry at F, its first
      F frames copied; the prompts and settings are this call's.
    max_chunks: stop after this many chunks (the rest can be resumed); None: finish.
    progress: show a progress bar with frames/s.
    on_frames: called as ``on_frames(first frame, frames [n, H, W, 3] uint8)`` with each
      generated chunk, in order, before the upscaling and the lossy video encoding (metrics
      read these). Given frames and frames before a resume are not passed. Writer only.
    writer: whether this process writes the files (default: JAX process 0). With several
      processes every one runs the sampler (the parameters are split over all devices), one
      writes, and all return once the files are complete.
  """
  from artv_jax import video_writer  # ffmpeg: only where files are written.
  settings = sampling.SamplerSettings.from_config(sample, schedule.prediction_type)
  num_frames, chunk_frames = int(sample.num_frames), int(sample.chunk_frames)
  prompts = sampling.prompt_schedule(sample)
  table = sampling.encode_prompts(encode_text, prompts)
  if given_frames is not None:
    given_frames = np.asarray(given_frames)
    if given_frames.ndim != 4 or given_frames.dtype != np.uint8:
      raise ValueError(f"given_frames must be uint8 [N, H, W, 3], got {given_frames.dtype} "
                       f"{list(given_frames.shape)}")
    if num_frames <= len(given_frames):
      raise ValueError(f"sample.num_frames={num_frames} leaves nothing to generate after the "
                       f"{len(given_frames)} given frames; raise it.")
    if branch_from is not None:
      raise ValueError("a branch starts from another run's frames: give sample.init or "
                       "sample.branch_from, not both.")
  writer = jax.process_index() == 0 if writer is None else writer
  out_path, out_dir = epath.Path(out_dir), str(out_dir)
  if writer:
    out_path.mkdir(parents=True, exist_ok=True)
  branch = None if branch_from is None else (str(branch_from[0]), int(branch_from[1]))
  fingerprint = _fingerprint(settings, prompts, seed, latent_shape, given_frames)

  height, width = jax.eval_shape(
      codec.decode, jax.ShapeDtypeStruct((1,) + tuple(latent_shape), jnp.float32)).shape[1:3]
  factor = int(sample.upscale) or max(1, math.ceil(128 / min(height, width)))
  fps = float(sample.fps)

  saved = saved_carry_frames(out_path) if resume else []
  if saved:
    carry = load_carry(carry_path(out_path, saved[-1]), fingerprint)
    if int(carry.frame) > num_frames:
      raise ValueError(f"the video in {out_dir} already has {int(carry.frame)} frames, more "
                       f"than sample.num_frames={num_frames}; raise it, or sample into a new "
                       "run (without sample.resume).")
    if writer:
      video_writer.discard_segments(out_dir, int(carry.frame))
  elif branch is not None:
    source, frame = branch
    carry = load_carry(carry_path(source, frame))
    expected = sampling.initial_carry(latent_shape, model.num_ref_frames, jax.random.key(0))
    if carry.refs.shape != expected.refs.shape:
      raise ValueError(f"sample.branch_from: {source} holds references of shape "
                       f"{list(carry.refs.shape)}, this model makes {list(expected.refs.shape)}")
    if frame >= num_frames:
      raise ValueError(f"sample.num_frames={num_frames} leaves nothing to generate after "
                       f"frame {frame} of the branch; raise it.")
    if writer:
      video_writer.discard_segments(out_dir)
      _start_branch(out_path, epath.Path(source), frame)
      save_carry(carry_path(out_path, frame), host_carry(carry), fingerprint)
  else:
    if writer:
      video_writer.discard_segments(out_dir)
    rng = jax.random.key(seed)
    if given_frames is None:
      carry = sampling.initial_carry(latent_shape, model.num_ref_frames, rng)
    else:
      if given_frames.shape[1:3] != (height, width):
        raise ValueError(f"given frames are {given_frames.shape[1]}x{given_frames.shape[2]}, "
                         f"the model makes {height}x{width}; resize them.")
      pixels = jnp.asarray(given_frames, jnp.float32) / 127.5 - 1.0
      carry = sampling.carry_from_latents(codec.encode(pixels), model.num_ref_frames, rng)
      host = host_carry(carry)
      if writer:
        video_writer.write_segment(out_dir, 0, video_writer.upscale(given_frames, factor), fps)
        save_carry(carry_path(out_path, len(given_frames)), host, fingerprint)
  start = int(carry.frame)

  info = {"prompts": [[int(s), str(p)] for s, p in prompts], "num_frames": num_frames,
          "fps": fps, "seed": seed,
          "mode": ("text_to_video" if given_frames is None else
                   "image_to_video" if len(given_frames) == 1 else "continuation"),
          "given_frames": 0 if given_frames is None else len(given_frames),
          "branch_from": None if branch is None else f"{branch[0]}@{branch[1]}",
          "sampler": dataclasses.asdict(settings), "chunk_frames": chunk_frames,
          "timesteps": settings.timesteps(schedule.num_train_steps)[0].tolist(),
          "latent_shape": list(latent_shape), "frame_size": [height, width],
          "upscale": factor}
  json_path = out_path / JSON_FILE
  if writer:
    paths.write_atomic(json_path, json.dumps(
        {**info, "frames_written": start, "complete": False}, indent=2))

  chunk_starts = list(range(start, num_frames, chunk_frames))[:max_chunks]
  end = jnp.asarray(num_frames, jnp.int32)
  bar = tqdm(total=num_frames, initial=start, unit="frame", disable=not (progress and writer),
             dynamic_ncols=True)
  written = start

  def write(first: int, frames: jax.Array, carry: sampling.Carry,
            mask_means: jax.Array) -> int:
    n = min(chunk_frames, num_frames - first)
    frames, mask_means = parallel.fetch((frames[:n], mask_means[:n]))  # On every process.
    host = host_carry(carry)
    if not writer:
      return first + n
    pixels = video_writer.to_uint8(frames)
    if on_frames is not None:
      on_frames(first, pixels)
    video_writer.write_segment(out_dir, first, video_writer.upscale(pixels, factor), fps)
    save_carry(carry_path(out_path, first + n), host, fingerprint)  # After its segment.
    bar.update(n)
    bar.set_postfix(mask=f"{float(np.mean(mask_means)):.3f}")
    return first + n

  # The next chunk is dispatched before the previous one is written, so the accelerator works
  # while the host encodes video.
  pending = None
  t0 = time.perf_counter()
  for first in chunk_starts:
    carry, latents, mask_means = sampling.sample_chunk(
        model, params, schedule, settings, table, carry, end, num_frames=chunk_frames)
    frames = codec.decode(latents)
    if pending is not None:
      written = write(*pending)
    pending = (first, frames, carry, mask_means)
  if pending is not None:
    written = write(*pending)
  bar.close()
  if written > start and writer:
    logging.info("generated frames %d-%d in %.1fs", start, written - 1,
                 time.perf_counter() - t0)

  every = int(sample.contact_sheet_every) or max(1, math.ceil(written / 48))
  files = {key: out_path / name for key, name in video_writer.OUTPUT_FILES.items()}
  complete = written == num_frames
  if writer:
    video_writer.finalize_video(out_dir, fps, every)
    paths.write_atomic(json_path, json.dumps(
        {**info, "frames_written": written, "complete": complete,
         "contact_sheet_every": every, "files": {k: v.name for k, v in files.items()}},
        indent=2))
  parallel.wait_for_all(f"artv_jax: video in {out_dir} written", VIDEO_WAIT_S)
  return VideoResult(str(files["video"]), str(files["gif"]), str(files["contact_sheet"]),
                     str(json_path), written, complete)


# --------------------------------------------------------------------------------------------
# From a trained run's workdir.


class Restored(NamedTuple):
  """A trained run, ready to sample: its networks and one parameter tree of a checkpoint."""
  models: build.Models  # frozen networks placed on the mesh
  params: Any  # ART·V parameters (the EMA if sample.use_ema), in their fsdp shardings
  step: int  # the checkpoint's step


def restore_params(config: ml_collections.ConfigDict, workdir: str) -> Restored:
  """The networks and the ART·V parameters of the latest checkpoint in ``workdir``: the EMA
  if ``sample.use_ema``, read alone (no optimiser state, no optimiser built)."""
  step = training_checkpoints.latest_step(workdir)
  if step is None:
    raise FileNotFoundError(
        f"no checkpoint in {epath.Path(workdir) / 'checkpoints'}: train first "
        "(--mode=train or --mode=train_and_sample) with the same --workdir.")
  mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
  models = build.build_models(config, build.seeds(config)[0], workdir, mesh)
  frozen_sharding = parallel.param_sharding(mesh, models.frozen_params,
                                            config.mesh.min_shard_size)
  models = models._replace(
      frozen_params=parallel.shard_pytree(models.frozen_params, frozen_sharding))
  field = "ema_params" if config.sample.use_ema else "params"
  params = training_checkpoints.restore_params(workdir, step, field,
                                               build.param_shapes(config, models, mesh))
  logging.info("Sampling from the %s of the checkpoint of step %d.", field, step)
  return Restored(models, params, step)


def load_init_frames(config: ml_collections.ConfigDict):
  """The frames a video starts from ([N, H, W, 3] uint8), or None for text-to-video."""
  path = config.sample.init
  if not path:
    return None
  from artv_jax.data import video_io  # ffmpeg: only where a file is read.
  size = config.data.resolution
  try:
    frames, _ = video_io.read_video(path, height=size, width=size)
  except video_io.VideoReadError as e:
    raise FileNotFoundError(f"config.sample.init: {e}") from e
  return frames


def video_inputs(models: build.Models, config: ml_collections.ConfigDict) -> dict:
  """The arguments of :func:`generate_video` fixed by the trained run's networks:
  {'encode_text', 'codec', 'latent_shape'}."""
  text_params = models.frozen_params["text_encoder"]
  encode_text = jax.jit(lambda ids: models.text_encoder.apply({"params": text_params}, ids))
  size = build.latent_size(models, config.data.resolution)
  return {"encode_text": lambda prompts: encode_text(build.tokenize(models.tokenizer, prompts)),
          "codec": latent_codec(models.vae, models.frozen_params.get("vae")),
          "latent_shape": (size, size, models.artv.latent_channels)}


def run_folder(sample: ml_collections.ConfigDict, samples_dir: paths.PathLike) -> epath.Path:
  """This sampling run's folder: ``sample.run_name``, or the next free number (000, 001, ...);
  with ``sample.resume`` and no name, the highest number. The same answer on every process."""
  samples_dir = epath.Path(samples_dir)
  if sample.run_name:
    folder = samples_dir / sample.run_name
    if not sample.resume and saved_carry_frames(folder):
      raise ValueError(f"the sampling run {folder} exists; name another (--config.sample."
                       "run_name=...), leave the name empty for the next number, or continue "
                       "it with --config.sample.resume=True")
    return folder
  children = samples_dir.iterdir() if samples_dir.is_dir() else []
  numbers = [int(p.name) for p in children if re.fullmatch(r"\d{3,}", p.name)]
  if sample.resume and not numbers:
    raise ValueError(f"sample.resume: no numbered run in {samples_dir} to continue")
  number = max(numbers, default=-1) + (0 if sample.resume else 1)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  number = int(multihost_utils.broadcast_one_to_all(np.int32(number)))  # Process 0's view.
  return samples_dir / f"{number:03d}"


def sample_from_workdir(config: ml_collections.ConfigDict, workdir: str) -> VideoResult:
  """Writes a video into its run folder under WORKDIR/samples (:func:`run_folder`)."""
  samples_dir = epath.Path(workdir) / "samples"
  sample = config.sample
  branch = parse_branch(sample.branch_from, samples_dir) if sample.branch_from else None
  folder = run_folder(sample, samples_dir)
  run = restore_params(config, workdir)
  result = generate_video(
      run.models.artv, run.params, run.models.schedule, sample, folder, seed=config.seed,
      given_frames=load_init_frames(config), resume=sample.resume, branch_from=branch,
      **video_inputs(run.models, config))
  if jax.process_index() == 0:
    logging.info("Wrote %s", result)
  return result
