r"""The scan auto-regressive sampler: frames/s, flatness in video length, overhead, Python loop.

    python benchmarks/sampler.py                           # configs/demo.py, random weights
    python benchmarks/sampler.py --frames 16,128,1024 --steps 20
    python benchmarks/sampler.py --config configs/base.py --latent-size 32

Prints, for the ART·V network and sampler settings of ``--config`` (random weights: the
timings do not depend on them):
  1. frames/s and per-frame latency of videos of each ``--frames`` length, generated chunk by
     chunk by the compiled ``sample_chunk`` (compilation excluded), and of a few frames at
     those depths into a video, interleaved (robust to a changing load): flat means the cost
     of a frame does not depend on how long the video is;
  2. the sampler's overhead over bare ART·V evaluations: the same number of network calls on
     the guidance branches' batch (3, or 2 where s_ref = 1) in one compiled loop, without
     guidance, masking, solver, RNG or carry;
  3. the same video from ``sample_reference`` (a Python loop over a jitted denoising step),
     as a time ratio to the scan, and the largest difference between the two;
  4. a whole ``generate_video`` run (decoding, mp4/gif/contact sheet) of ``--output-frames``
     (pixel-space configs).
"""
import argparse
import functools
import importlib.util
import os
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]  # common.py, and artv_jax without installing.
import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=os.path.join(os.path.dirname(_HERE), "configs",
                                                       "demo.py"),
                      help="config file with get_config() (model.unet, sample.*)")
  parser.add_argument("--frames", default="16,128,1024",
                      help="comma-separated video lengths (depths into a video) to time")
  parser.add_argument("--whole-frames", default=None,
                      help="lengths of the whole videos generated in (a); default --frames")
  parser.add_argument("--steps", type=int, default=None, help="denoising steps (config's)")
  parser.add_argument("--chunk", type=int, default=None, help="frames per compiled call")
  parser.add_argument("--latent-size", type=int, default=None,
                      help="latent side (default: data.resolution, / 8 for VAE latents)")
  parser.add_argument("--text-len", type=int, default=None,
                      help="text tokens (default: the text encoder's max positions)")
  parser.add_argument("--output-frames", type=int, default=128,
                      help="video length for the generate_video run (0: skip)")
  parser.add_argument("--timing-frames", type=int, default=2,
                      help="frames per timing in the interleaved comparisons")
  parser.add_argument("--rounds", type=int, default=15,
                      help="interleaved rounds of the comparisons (medians are used)")
  parser.add_argument("--xla-flags", default="", help="extra XLA_FLAGS, space separated")
  return parser.parse_args()


def _load_config(path: str):
  spec = importlib.util.spec_from_file_location("benchmark_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _build(config, latent_size: int, text_len: int):
  """ART·V from config.model with random weights (no init compile: its cost is not ours)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from artv_jax import build  # pylint: disable=g-import-not-at-top
  from artv_jax.models.unet import UNet2DConditionModel  # pylint: disable=g-import-not-at-top
  m = config.model
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[m.dtype]
  unet = UNet2DConditionModel.from_config(m.unet.to_dict(), dtype=dtype)
  channels = 3 if m.latent_space == "pixels" else unet.in_channels
  model = build.make_artv(m, unet, channels)
  shape = (latent_size, latent_size, channels)
  inputs = (jnp.zeros((1,) + shape), jnp.zeros((1,), jnp.int32),
            jnp.zeros((1, text_len, unet.cross_attention_dim)),
            jnp.zeros((1, m.num_ref_frames) + shape), jnp.zeros((1,) + shape),
            jnp.zeros((1,), jnp.int32), jnp.ones((1,), bool))
  shapes = jax.eval_shape(model.init, jax.random.key(0), *inputs)["params"]
  rng = np.random.default_rng(0)

  def fill(leaf):
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    fan_in = np.prod(leaf.shape[:-1]) if leaf.ndim > 1 else 1
    return jnp.asarray(noise / np.sqrt(fan_in) if leaf.ndim > 1 else 0.05 * noise)

  return model, jax.tree.map(fill, shapes), shape


def main():
  args = _parse_args()
  common.use_cpu_flags(args.xla_flags)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from artv_jax import generate, sampling  # pylint: disable=g-import-not-at-top
  from tests import reference_sampler  # pylint: disable=g-import-not-at-top
  from artv_jax.diffusion.schedule import make_schedule  # pylint: disable=g-import-not-at-top

  config = _load_config(args.config)
  sample = config.sample
  with sample.unlocked():
    if args.steps:
      sample.num_steps = args.steps
    if args.chunk:
      sample.chunk_frames = args.chunk
  latent_size = args.latent_size or (config.data.resolution if config.model.latent_space ==
                                     "pixels" else config.data.resolution // 8)
  text_len = args.text_len or config.model.text_encoder.get("max_position_embeddings", 77)
  model, params, latent_shape = _build(config, latent_size, text_len)
  schedule = make_schedule()
  settings = sampling.SamplerSettings.from_config(sample, schedule.prediction_type)
  chunk = int(sample.chunk_frames)
  dim = model.unet.cross_attention_dim
  branches = len(settings.branches)

  def encode_text(prompts):  # random text states: the cost is in the sampler, not here
    return jax.random.normal(jax.random.key(len(prompts)), (len(prompts), text_len, dim))

  table = sampling.encode_prompts(encode_text, sample.prompts)
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, load average "
        f"{common.load_average():.1f}")
  print(f"config {os.path.relpath(args.config)}: UNet {tuple(model.unet.block_out_channels)}, "
        f"latents {latent_shape}, text [{text_len}, {dim}], {settings.sampler} "
        f"{settings.num_steps} steps, chunks of {chunk} frames, {branches} network branches "
        "per step")

  def run_chunk(carry, end):
    carry, latents, _ = sampling.sample_chunk(model, params, schedule, settings, table, carry,
                                              jnp.int32(end), num_frames=chunk)
    jax.block_until_ready(latents)
    return carry, latents

  def scan_video(num_frames):
    """(latents, seconds per chunk) of a text-to-video sample of num_frames."""
    carry = sampling.initial_carry(latent_shape, model.num_ref_frames, jax.random.key(0))
    times, latents = [], []
    while int(carry.frame) < num_frames:
      start = time.perf_counter()
      carry, out = run_chunk(carry, num_frames)
      times.append(time.perf_counter() - start)
      latents.append(out)
    return jnp.concatenate(latents)[:num_frames], times

  start = time.perf_counter()
  scan_video(1)
  print(f"compile + first chunk: {time.perf_counter() - start:.1f} s\n")

  # 1. Flat in video length: (a) whole videos, as a user makes them. Their timings drift with
  # the machine's load, so (b) times a few frames at different depths into a video,
  # interleaved: a carry at frame p differs from one at frame 0 only in its frame counter.
  lengths = [int(n) for n in args.frames.split(",")]
  rows = []
  for num_frames in map(int, (args.whole_frames or args.frames).split(",")):
    _, times = scan_video(num_frames)
    rows.append([num_frames, f"{num_frames / sum(times):.2f}",
                 f"{1e3 * sum(times) / num_frames:.1f}"])
  print("(a) whole videos\n" + common.format_table(["frames", "frames/s", "ms/frame"], rows))

  # (b), 2. and 3. time `k` frames at a time, interleaved round by round, so that a change of
  # load hits every variant alike; the chunk program stops early at its end frame.
  k, steps = args.timing_frames, settings.num_steps
  start_carry = sampling.initial_carry(latent_shape, model.num_ref_frames, jax.random.key(0))
  deep_carry, _ = run_chunk(start_carry, k)  # real references, for the deep timings

  def scan_from(p):
    """k frames from frame p (0: the start of a text-to-video sample)."""
    carry = start_carry if p == 0 else deep_carry.replace(frame=jnp.asarray(p, jnp.int32))
    return run_chunk(carry, p + k)[1][:k]

  # 2. Bare network calls: k x steps calls of the branches' batch, with the inputs as arguments
  # (closed-over constants would let XLA fold the reference pathway).
  inputs = sampling.frame_inputs(schedule, settings, table.text[0], table.null_text,
                                 start_carry.refs, start_carry.anchor, jnp.asarray(False),
                                 jax.random.key(1))
  timesteps = jnp.tile(jnp.asarray(settings.timesteps(schedule.num_train_steps)[0]), k)

  @jax.jit
  def bare(params, inputs, x, timesteps):
    def call(x, t):
      out, _ = model.apply({"params": params}, x, jnp.full((branches,), t), inputs.text,
                           inputs.refs, inputs.anchor, inputs.ref_noise_level, inputs.keep_refs)
      return out, None  # the output feeds the next call, as in sampling
    return jax.lax.scan(call, x, timesteps)[0]

  # 3. The same frames from a Python loop over a jitted denoising step.
  def python_loop():
    return reference_sampler.sample_reference(model, params, schedule, settings, table,
                                     jax.random.key(0), k, latent_shape)

  variants = {f"scan from frame {p}": functools.partial(scan_from, p) for p in lengths}
  variants.update({"scan from frame 0": functools.partial(scan_from, 0),
                   "bare network calls": functools.partial(
                       bare, params, inputs, jnp.zeros((branches,) + latent_shape), timesteps),
                   "Python loop, jitted step": python_loop})
  timings = {name: [] for name in variants}
  for name, fn in variants.items():  # compiles
    jax.block_until_ready(fn())
  for _ in range(args.rounds):
    for name, fn in variants.items():
      timings[name] += common.time_calls(lambda fn=fn: jax.block_until_ready(fn()), 1, 0)
  # Medians, and minima: the run least disturbed by other processes on a shared machine.
  ms = {name: 1e3 * common.median(t) / k for name, t in timings.items()}
  fastest = {name: 1e3 * min(t) / k for name, t in timings.items()}
  scan = lambda p: f"scan from frame {p}"
  print(f"(b) {k} frames at frame p of a video, {args.rounds} interleaved rounds\n"
        + common.format_table(["p", "median ms/frame", "min ms/frame"],
                              [[p, f"{ms[scan(p)]:.1f}", f"{fastest[scan(p)]:.1f}"]
                               for p in lengths]))
  first, last = scan(lengths[0]), scan(lengths[-1])
  print(f"per-frame latency at frame {lengths[-1]} / at frame {lengths[0]}: "
        f"{ms[last] / ms[first]:.3f} (medians), {fastest[last] / fastest[first]:.3f} (minima)\n")

  bare_name, loop_name = "bare network calls", "Python loop, jitted step"
  scan_ms = ms[scan(0)]
  ratio = lambda a, b: (f"{ms[a] / ms[b]:.3f} (medians {ms[a]:.1f} / {ms[b]:.1f} ms/frame), "
                        f"{fastest[a] / fastest[b]:.3f} (minima)")
  print(f"2. sampler / bare network calls ({k} frames x {steps} steps, "
        f"{ms[bare_name] / steps:.2f} ms per {branches}-branch call): {ratio(scan(0), bare_name)}")
  difference = float(jnp.abs(python_loop() - scan_from(0)).max())
  print(f"3. Python loop over a jitted step / scan: {ratio(loop_name, scan(0))}; max "
        f"|difference| of the videos {difference:.1e}\n")

  # 4. The whole pipeline, with decoding and files (pixel-space models: no VAE to build).
  if args.output_frames and config.model.latent_space == "pixels":
    with sample.unlocked():
      sample.num_frames = args.output_frames
    with tempfile.TemporaryDirectory() as out_dir:
      codec = generate.latent_codec(None)
      start = time.perf_counter()
      result = generate.generate_video(model, params, schedule, sample, out_dir,
                                       encode_text=encode_text, codec=codec,
                                       latent_shape=latent_shape, progress=False)
      total = time.perf_counter() - start
      sizes = {name: os.path.getsize(getattr(result, name)) // 1024 for name in ("video", "gif")}
    print(f"generate_video, {result.num_frames} frames with mp4/gif/contact sheet: {total:.1f} s "
          f"({result.num_frames / total:.2f} frames/s, sampler alone "
          f"{1e3 / scan_ms:.2f}); mp4 {sizes['video']} KiB, gif {sizes['gif']} KiB")
  print(f"load average at the end: {common.load_average():.1f}")


if __name__ == "__main__":
  main()
