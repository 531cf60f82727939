r"""ART·V at SD 2.1-base size on one accelerator: parity with diffusers, then training and
sampling speed against PyTorch diffusers on the same card, in one run.

    python benchmarks/accelerator.py --out speed.json               # one GPU
    python benchmarks/accelerator.py --small --out /tmp/small.json  # CPU, toy sizes

First every program the run times is lowered and compiled, side by side in threads (XLA's
compiles release the GIL); then the sections run in this order, each printing its table when
it ends and rewriting ``--out`` (JSON). One that would start after ``--budget`` seconds is
skipped and listed as skipped; an error is recorded and the run goes on.
  parity        diffusers' UNet2DConditionModel with SD 2.1-base's config (random weights, fp32,
                TF32 off) against ours with its weights converted by our converter: the largest
                error of the forward relative to the largest output, in fp32, and of our bf16
                forward (the bound bf16 compute puts on any port).
  train         the ART·V train step as configs/base.py sets it (SD 2.1-base UNet + adapter +
                mask head, 256² frames as 32×32×4 latents drawn from precomputed-style posterior
                moments, 77×1024 text states, bf16 compute, fp32 AdamW + EMA) at --lever-batch:
                ms/step, examples/s, model TFLOP/s and MFU (XLA's cost analysis of the step
                without remat, so recomputation does not count, against --peak-tflops),
                hardware TFLOP/s (the compiled step's own count), compiled memory footprint
                (arguments + outputs + temporaries - donated), compile time.
  levers        one change at a time against that baseline, same batch (LEVERS).
  torch_train   the same UNet's training step in diffusers at that batch: bf16 autocast, SDPA,
                channels-last, fused AdamW + EMA; eager (and torch.compile, below).
  sample        the scan sampler, 256², DDIM --steps steps, dual CFG on 3 branches, VAE decode
                per chunk: frames/s and per-frame latency of one chunk, from fp32 and bf16
                parameters, XLA and cuDNN attention, 1 video and --videos at once
                (sampling.sample_chunks).
  torch_sample  the same per-frame denoising loop in diffusers (bf16, SDPA, DDIMScheduler, the
                3 branches in one batch, VAE decode), frames/s as a ratio.
  train         the baseline at every --batches.
  torch.compile the torch_train step compiled.
  best          the levers that made the step faster, together, at every --batches.
  long          --long-frames videos with the fastest sampling variant: per-chunk latency.

Random weights everywhere: speed does not depend on them. The card's peak is a parameter
(989 TFLOP/s dense bf16 for an H100/H200 SXM).
"""
import argparse
import concurrent.futures
import dataclasses
import functools
import json
import os
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Optional

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]  # common.py, configs and artv_jax.
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

# name -> (what it changes, config overrides, XLA compiler options). Each is measured alone
# against the baseline; 'gpu_only' levers are skipped on other backends.
LEVERS = {
    "cudnn_attention": ("cuDNN flash attention", {"model.attention": "cudnn"}, {}),
    "no_remat": ("no gradient checkpointing", {"model.remat": False}, {}),
    "remat_dots": ("remat keeps matmul outputs",
                   {"model.remat_policy": "dots_with_no_batch_dims_saveable"}, {}),
    "bf16_gather": ("parameters cast to bf16 before the (fsdp) gather",
                    {"mesh.gather_dtype": "compute"}, {}),
    "no_donation": ("state not donated (memory, not speed)", {"donate": False}, {}),
    "latency_hiding": ("XLA latency-hiding scheduler",
                       {}, {"xla_gpu_enable_latency_hiding_scheduler": True}),
    "no_command_buffers": ("XLA command buffers (CUDA graphs) off",
                           {}, {"xla_gpu_enable_command_buffer": ""}),
}
GPU_ONLY = ("cudnn_attention", "latency_hiding", "no_command_buffers")
# Levers that change memory, not the arithmetic: never part of 'best'.
NOT_FOR_SPEED = ("no_donation",)

# --small: one block per network, so that XLA:CPU compiles each program in seconds.
SMALL_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(16,), down_block_types=("CrossAttnDownBlock2D",),
    up_block_types=("CrossAttnUpBlock2D",), attention_head_dim=2, cross_attention_dim=16,
    norm_num_groups=4, use_linear_projection=True)
SMALL_TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu")
SMALL_VAE = dict(block_out_channels=(8,), layers_per_block=1, norm_num_groups=4,
                 latent_channels=4, down_block_types=("DownEncoderBlock2D",),
                 up_block_types=("UpDecoderBlock2D",))


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--small", action="store_true",
                      help="toy sizes on any backend (the CI test of this script)")
  parser.add_argument("--out", default="", help="JSON file of every figure")
  parser.add_argument("--budget", type=float, default=None,
                      help="seconds after which no section starts (default 450; small 300)")
  parser.add_argument("--batches", default=None,
                      help="global batches of the baseline and of 'best' (8,16,32,64)")
  parser.add_argument("--lever-batch", type=int, default=None,
                      help="batch of train, torch_train and levers (32; small 2)")
  parser.add_argument("--train-steps", type=int, default=None, help="timed steps (10; small 2)")
  parser.add_argument("--steps", type=int, default=None, help="DDIM steps per frame (50; 2)")
  parser.add_argument("--chunk", type=int, default=None, help="frames per chunk (16; small 2)")
  parser.add_argument("--videos", type=int, default=None, help="videos at once (8; small 2)")
  parser.add_argument("--long-frames", type=int, default=None, help="long video (128; 4)")
  parser.add_argument("--peak-tflops", type=float, default=989.0,
                      help="the card's dense bf16 peak, for MFU")
  parser.add_argument("--sections", default="parity,train,torch_train,levers,sample,"
                      "torch_sample,best,long")
  parser.add_argument("--levers", default=None,
                      help=f"levers to measure (all; small: no_remat): {','.join(LEVERS)}")
  parser.add_argument("--sample-attentions", default=None,
                      help="attentions the sampler is timed with (xla,cudnn on a GPU; else auto)")
  parser.add_argument("--param-dtypes", default=None,
                      help="parameter dtypes the sampler is timed with (fp32,bf16; small: bf16)")
  parser.add_argument("--torch-compile", default=None, choices=("on", "off"),
                      help="time torch.compile too (default: on a GPU)")
  parser.add_argument("--compile-threads", type=int, default=6,
                      help="lever steps compiled at once (XLA compiles release the GIL)")
  parser.add_argument("--commit", default="", help="recorded in the JSON")
  parser.add_argument("--cache-dir", default="",
                      help="JAX's persistent compilation cache (a rerun on the same machine "
                           "skips the compiles); empty: none")
  args = parser.parse_args(argv)
  small = args.small
  defaults = dict(budget=300.0 if small else 450.0, batches="2" if small else "8,16,32,64",
                  levers="no_remat" if small else ",".join(LEVERS),
                  param_dtypes="bf16" if small else "fp32,bf16",
                  lever_batch=2 if small else 32, train_steps=2 if small else 10,
                  steps=2 if small else 50, chunk=2 if small else 16,
                  videos=2 if small else 8, long_frames=4 if small else 128)
  for name, value in defaults.items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  return args


class Run:
  """The results so far, the time budget, and the JSON file they go to."""

  def __init__(self, args):
    self.args = args
    self.start = time.perf_counter()
    self.results: dict[str, Any] = {"meta": {}, "skipped": [], "errors": []}

  def elapsed(self) -> float:
    return time.perf_counter() - self.start

  def allows(self, what: str, estimate: float = 0.0) -> bool:
    """Whether ``what`` may start (the budget minus its estimated seconds is not spent);
    records a skip otherwise."""
    if self.elapsed() + estimate <= self.args.budget:
      self.log(f"{what}")
      return True
    self.results["skipped"].append(f"{what} (at {self.elapsed():.0f} s, estimate "
                                   f"{estimate:.0f} s, budget {self.args.budget:.0f} s)")
    print(f"-- skipped {what}: budget", flush=True)
    return False

  def log(self, message: str) -> None:
    """A timestamped progress line: a run stopped by a time limit shows where it was."""
    print(f"[{self.elapsed():6.1f} s] {message}", flush=True)

  def add(self, section: str, row: dict) -> None:
    self.results.setdefault(section, []).append(row)
    self.save()

  def error(self, what: str, e: BaseException) -> None:
    message = f"{what}: {type(e).__name__}: {str(e)[:2000]}"
    self.results["errors"].append(message)
    print(f"-- error in {message}\n{traceback.format_exc()[-3000:]}", flush=True)
    self.save()

  def save(self) -> None:
    self.results["meta"]["elapsed_s"] = round(self.elapsed(), 1)
    if self.args.out:
      tmp = self.args.out + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump(self.results, f, indent=1, default=str)
      os.replace(tmp, self.args.out)


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
  print(f"\n{title}\n" + common.format_table(
      columns, [[_cell(row.get(c, "")) for c in columns] for row in rows]), flush=True)


def _cell(value) -> str:
  if isinstance(value, float):
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
  return str(value)


# ------------------------------------------------------------------------------------------
# Models and configs.


def model_configs(small: bool) -> dict:
  """{'unet', 'text_encoder', 'vae', 'scheduler'} diffusers configs: SD 2.1-base's, or toys."""
  from artv_jax.checkpoints import pretrained, sources
  configs = pretrained.read_configs(sources.PRESETS_DIR / "sd21-base")
  configs["unet"]["sample_size"] = 32  # 256² frames, ART·V's training resolution.
  if small:
    configs.update(unet=dict(SMALL_UNET), text_encoder=dict(SMALL_TEXT), vae=dict(SMALL_VAE))
  return configs


def train_config(args, configs: dict, batch: int):
  """configs/base.py with the networks of ``configs`` built from scratch, frames of the UNet's
  sample_size times the VAE's down-sampling (256²; small: 16²)."""
  import ml_collections
  from configs import base
  config = base.get_config()
  m = config.model
  drop = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}
  m.unet = ml_collections.ConfigDict(drop(configs["unet"]))
  m.text_encoder = ml_collections.ConfigDict(drop(configs["text_encoder"]))
  m.vae = ml_collections.ConfigDict(drop(configs["vae"]))
  m.tokenizer = "synthetic_shapes"  # A word tokenizer written locally: no download.
  vae_factor = 2 ** (len(configs["vae"]["block_out_channels"]) - 1)
  config.data.resolution = configs["unet"]["sample_size"] * vae_factor
  config.train.batch_size = batch
  return config


def apply_overrides(config, overrides: dict):
  """A copy of ``config`` with {'model.attention': 'cudnn', ...} set (and 'donate' dropped)."""
  config = config.copy_and_resolve_references()
  for path, value in overrides.items():
    if path == "donate":
      continue
    section, field = path.split(".")
    config[section][field] = value
  return config


@dataclasses.dataclass
class Bench:
  """What the train sections share: the trainer, its state and per-batch inputs."""
  trainer: Any
  config: Any
  state: Any = None
  batches: dict = dataclasses.field(default_factory=dict)
  lowered: dict = dataclasses.field(default_factory=dict)  # train steps, by train_key


def build_bench(args, configs: dict, workdir: str) -> Bench:
  from artv_jax import train
  config = train_config(args, configs, args.lever_batch)
  trainer = train.make_trainer(config, workdir)
  return Bench(trainer, config)


def fresh_state(bench: Bench):
  """A train state with random parameters, filled on the host (no init program to compile)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from artv_jax import train
  trainer = bench.trainer
  shapes = trainer.abstract_state.params
  rng = np.random.default_rng(0)

  def fill(leaf):
    scale = 1 / np.sqrt(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 0.05
    return (scale * rng.standard_normal(leaf.shape, np.float32)).astype(leaf.dtype)

  params = jax.tree.map(fill, shapes)
  optimizer = trainer.optimizer

  def make(params):
    return train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                            opt_state=optimizer.init(params),
                            ema_params=jax.tree.map(jnp.copy, params),
                            rng=jax.random.key(0))

  bench.state = jax.jit(make, out_shardings=trainer.state_sharding)(params)
  return bench.state


def model_batch(bench: Bench, batch: int):
  """A precomputed-style global batch: posterior moments of 32×32×4 latents, text states."""
  import numpy as np
  from artv_jax import build, train
  if batch not in bench.batches:
    models = bench.trainer.models
    size = build.latent_size(models, bench.config.data.resolution)
    channels = 2 * models.vae.latent_channels
    rng = np.random.default_rng(batch)
    moments = lambda *shape: rng.standard_normal(shape, np.float32)
    text = models.artv.unet.cross_attention_dim
    bench.batches[batch] = train.to_model_batch(bench.trainer, {
        "target_moments": moments(batch, size, size, channels),
        "refs_moments": moments(batch, bench.config.model.num_ref_frames, size, size, channels),
        "anchor_moments": moments(batch, size, size, channels),
        "text_states": rng.standard_normal((batch, len(models.null_tokens), text), np.float32)})
  return bench.batches[batch]


def variant_step(bench: Bench, overrides: dict, batch: int):
  """The jitted train step with ``overrides`` applied to the bench's config."""
  import jax
  from artv_jax import train
  config = apply_overrides(bench.config, overrides)
  config.train.batch_size = batch
  trainer = bench.trainer
  m = config.model
  artv = trainer.models.artv
  artv = artv.clone(unet=artv.unet.clone(remat=m.remat, remat_policy=m.remat_policy,
                                         attention=m.attention, dense=m.dense))
  models = trainer.models._replace(artv=artv)
  frozen_sharding = jax.tree.map(lambda x: x.sharding, trainer.frozen)
  return train.jit_train_step(config, models, trainer.optimizer, trainer.mesh,
                              trainer.state_sharding, frozen_sharding,
                              donate=overrides.get("donate", True))


# ------------------------------------------------------------------------------------------
# PyTorch diffusers.


def torch_device():
  import torch
  return "cuda" if torch.cuda.is_available() else "cpu"


def torch_unet(configs: dict, dtype=None, seed: int = 0):
  import diffusers
  import torch
  torch.manual_seed(seed)
  config = {k: v for k, v in configs["unet"].items() if not k.startswith("_")}
  with torch.device(torch_device()):
    unet = diffusers.UNet2DConditionModel(**config)
  with torch.no_grad():  # Off the init (zeroed output conv), so every output is nonzero.
    for p in unet.parameters():
      p.add_(0.02 * torch.randn_like(p))
  return unet if dtype is None else unet.to(dtype)


def torch_train(configs: dict, batch: int, steps: int, compile_: bool) -> dict:
  """The diffusers UNet's training step: bf16 autocast, SDPA, channels-last, fused AdamW, EMA."""
  import torch
  device = torch_device()
  unet = torch_unet(configs).train().to(memory_format=torch.channels_last)
  params = [p for p in unet.parameters() if p.requires_grad]
  optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=1e-2, fused=device == "cuda")
  ema = [p.detach().clone() for p in params]
  net = torch.compile(unet) if compile_ else unet
  size, channels = configs["unet"]["sample_size"], configs["unet"]["in_channels"]
  gen = torch.Generator(device).manual_seed(0)
  x = torch.randn(batch, channels, size, size, device=device, generator=gen).to(
      memory_format=torch.channels_last)
  target = torch.randn_like(x)
  t = torch.randint(0, 1000, (batch,), device=device, generator=gen)
  ctx = torch.randn(batch, 77, configs["unet"]["cross_attention_dim"], device=device,
                    generator=gen)

  def step():
    with torch.autocast(device, dtype=torch.bfloat16):
      loss = torch.nn.functional.mse_loss(net(x, t, ctx).sample.float(), target)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
      torch._foreach_lerp_(ema, params, 1e-4)  # pylint: disable=protected-access
    if device == "cuda":
      torch.cuda.synchronize()

  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  start = time.perf_counter()
  step()
  first = time.perf_counter() - start
  times = common.time_calls(step, repeats=steps, warmup=1)
  peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
  del unet, net, optimizer, ema, params
  _torch_free()
  seconds = common.median(times)
  return {"variant": "torch.compile" if compile_ else "eager", "batch": batch,
          "ms_per_step": 1e3 * seconds, "min_ms": 1e3 * min(times),
          "examples_per_s": batch / seconds, "first_step_s": first, "peak_gb": peak}


def _torch_free():
  import gc
  import torch
  gc.collect()
  if torch.cuda.is_available():
    torch.cuda.empty_cache()


def torch_sample(configs: dict, videos: int, steps: int, frames: int, text_scale: float,
                 ref_scale: float) -> dict:
  """The per-frame denoising loop of ``videos`` videos in diffusers: bf16 UNet on the 3 guidance
  branches at once, dual CFG, DDIMScheduler; then the VAE decode of each frame."""
  import diffusers
  import torch
  device = torch_device()
  dtype = torch.bfloat16
  unet = torch_unet(configs, dtype).eval().to(memory_format=torch.channels_last)
  with torch.device(device):
    vae = diffusers.AutoencoderKL(**{k: v for k, v in configs["vae"].items()
                                     if not k.startswith("_")}).to(dtype).eval()
  scheduler = diffusers.DDIMScheduler.from_config(
      {**configs["scheduler"], "timestep_spacing": "trailing"})
  scheduler.set_timesteps(steps)
  size, channels = configs["unet"]["sample_size"], configs["unet"]["in_channels"]
  ctx = torch.randn(3 * videos, 77, configs["unet"]["cross_attention_dim"], device=device,
                    dtype=dtype)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  @torch.no_grad()
  def frame():
    latents = torch.randn(videos, channels, size, size, device=device, dtype=dtype)
    for t in scheduler.timesteps:
      x = torch.cat([latents] * 3).to(memory_format=torch.channels_last)
      none, ref, ref_text = unet(x, t, ctx).sample.chunk(3)
      eps = none + ref_scale * (ref - none) + text_scale * (ref_text - ref)
      latents = scheduler.step(eps, t, latents).prev_sample
    sync()
    return latents

  @torch.no_grad()
  def decode():
    z = torch.randn(4, channels, size, size, device=device, dtype=dtype)
    vae.decode(z / vae.config.scaling_factor)
    sync()

  frame_times = common.time_calls(frame, repeats=frames, warmup=1)
  decode_s = common.median(common.time_calls(decode, repeats=3, warmup=1)) / 4
  del unet, vae
  _torch_free()
  per_frame = common.median(frame_times) / videos + decode_s
  return {"videos": videos, "ms_per_frame": 1e3 * per_frame, "frames_per_s": 1 / per_frame,
          "denoise_ms_per_frame_step": 1e3 * common.median(frame_times) / steps,
          "decode_ms_per_frame": 1e3 * decode_s}


# ------------------------------------------------------------------------------------------
# Sections.


def section_parity(run: Run, configs: dict) -> None:
  """diffusers fp32 (TF32 off) against ours fp32 and bf16, weights by our converter."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from artv_jax.checkpoints.rename import convert_state_dict
  from artv_jax.models.unet import UNet2DConditionModel
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  unet = torch_unet(configs).eval()
  size, channels = configs["unet"]["sample_size"], configs["unet"]["in_channels"]
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, size, size, channels), np.float32)
  t = np.array([10, 700], np.int32)
  ctx = rng.standard_normal((2, 77, configs["unet"]["cross_attention_dim"]), np.float32)
  device = torch_device()
  with torch.no_grad():
    ref = unet(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device),
               torch.from_numpy(t).long().to(device),
               torch.from_numpy(ctx).to(device)).sample.float().cpu().numpy()
  state_dict = {k: v.detach().float().cpu().numpy() for k, v in unet.state_dict().items()}
  del unet
  _torch_free()
  torch.backends.cuda.matmul.allow_tf32 = True

  config = {k: v for k, v in configs["unet"].items() if not k.startswith("_")}
  outputs = {}
  for name, dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
    model = UNet2DConditionModel.from_config(config, dtype=dtype)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, t, ctx)["params"]
    params = jax.device_put(convert_state_dict(state_dict, shapes))
    forward = jax.jit(lambda p, x, t, c, model=model: model.apply({"params": p}, x, t, c))
    with jax.default_matmul_precision("highest"):
      outputs[name] = np.asarray(forward(params, x, t, ctx)).transpose(0, 3, 1, 2)
    del params
  scale = float(np.abs(ref).max())
  rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())
  row = {"fp32_vs_diffusers_fp32": rel(outputs["fp32"], ref),
         "bf16_vs_diffusers_fp32": rel(outputs["bf16"], ref),
         "bf16_vs_ours_fp32": rel(outputs["bf16"], outputs["fp32"]),
         "output_max_abs": scale, "params": sum(v.size for v in state_dict.values())}
  run.add("parity", row)
  print_table("parity (max |ours - ref| / max |ref|, forward, batch 2)", [row],
              ["fp32_vs_diffusers_fp32", "bf16_vs_diffusers_fp32", "bf16_vs_ours_fp32",
               "params"])


def train_key(overrides: dict, options: dict, batch: int) -> str:
  return json.dumps(["train", overrides, options, batch], sort_keys=True)


def lower_step(bench: Bench, overrides: dict, batch: int):
  """The train step with ``overrides`` for a global ``batch``, lowered (cached)."""
  import jax
  key = train_key(overrides, {}, batch)
  if key not in bench.lowered:
    step = variant_step(bench, overrides, batch)
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                         bench.state)
    bench.lowered[key] = step.lower(state, model_batch(bench, batch), bench.trainer.frozen)
  return bench.lowered[key]


def model_flops(bench: Bench, batch: int) -> Optional[float]:
  """FLOPs of one step without recomputation: XLA's count of the step lowered without remat
  (the 'no_remat' lever's program); None where the backend gives no count before compiling."""
  analysis = lower_step(bench, {"model.remat": False}, batch).cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis["flops"]) if analysis and "flops" in analysis else None


def compile_many(programs: dict, jobs: dict, threads: int) -> None:
  """Adds {key: (program or the exception, compile seconds)} to ``programs`` for the jobs
  {key: (lower: () -> Lowered, XLA compiler options)} not in it yet: lowered one by one
  (tracing holds the GIL), compiled side by side in threads (XLA's compiles release it)."""
  lowered = {}
  for key, (lower, _) in jobs.items():
    if key not in programs:
      try:
        lowered[key] = lower()
      except Exception as e:  # pylint: disable=broad-except
        programs[key] = (e, 0.0)

  def one(key):
    start = time.perf_counter()
    try:
      program = lowered[key].compile(jobs[key][1] or None)
    except Exception as e:  # pylint: disable=broad-except
      program = e
    programs[key] = (program, time.perf_counter() - start)

  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    list(pool.map(one, list(lowered)))


def train_job(bench: Bench, overrides: dict, options: dict, batch: int) -> tuple[str, tuple]:
  return train_key(overrides, options, batch), (
      functools.partial(lower_step, bench, overrides, batch), options)


def footprint_gb(compiled) -> Optional[float]:
  m = compiled.memory_analysis()
  if m is None:
    return None
  total = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
           + m.temp_size_in_bytes)
  return total / 2**30


def time_step(bench: Bench, compiled, batch: int, steps: int) -> list[float]:
  """Seconds of each of ``steps`` steps (after two untimed ones), the state carried along."""
  import jax
  inputs = model_batch(bench, batch)
  frozen = bench.trainer.frozen

  def step():
    bench.state, metrics = compiled(bench.state, inputs, frozen)
    jax.block_until_ready(metrics)

  try:
    return common.time_calls(step, repeats=steps, warmup=2)
  finally:
    if any(x.is_deleted() for x in jax.tree.leaves(bench.state)):
      fresh_state(bench)  # A failed call consumed the donated state.


def train_row(bench: Bench, name: str, batch: int, compiled, compile_s: float, steps: int,
              peak: float) -> dict:
  times = time_step(bench, compiled, batch, steps)
  seconds = common.median(times)
  flops = model_flops(bench, batch)  # After the timing: tracing the full step takes a while.
  try:
    hardware = common.xla_flops(compiled) / seconds / 1e12
  except RuntimeError:
    hardware = None
  model = None if flops is None else flops / seconds / 1e12
  return {"variant": name, "batch": batch, "ms_per_step": 1e3 * seconds,
          "min_ms": 1e3 * min(times), "examples_per_s": batch / seconds,
          "model_tflop_per_step": None if flops is None else flops / 1e12,
          "model_tflops": model, "mfu": None if model is None else model / peak,
          "hardware_tflops": hardware,
          "footprint_gb": footprint_gb(compiled), "compile_s": compile_s}


TRAIN_COLUMNS = ["variant", "batch", "ms_per_step", "examples_per_s", "model_tflops", "mfu",
                 "hardware_tflops", "footprint_gb", "compile_s"]


def train_variant(run: Run, bench: Bench, programs: dict, section: str, name: str,
                  overrides: dict, options: dict, batch: int) -> Optional[dict]:
  """Times one compiled train-step variant and records its row (or its error)."""
  program, compile_s = programs[train_key(overrides, options, batch)]
  try:
    if isinstance(program, Exception):
      raise program
    row = train_row(bench, name, batch, program, compile_s, run.args.train_steps,
                    run.args.peak_tflops)
  except Exception as e:  # pylint: disable=broad-except
    run.error(f"{section}/{name}/batch {batch}", e)
    run.add(section, {"variant": name, "batch": batch, "error": f"{type(e).__name__}: "
                                                                f"{str(e)[:200]}"})
    return None
  run.add(section, row)
  return row


def levers_for(args, backend: str) -> list[str]:
  names = [n for n in args.levers.split(",") if n]
  return [n for n in names if backend == "gpu" or n not in GPU_ONLY]


def section_baseline(run: Run, bench: Bench, programs: dict) -> Optional[dict]:
  """The train step as configs/base.py sets it, at --lever-batch."""
  batch = run.args.lever_batch
  baseline = train_variant(run, bench, programs, "train", "baseline", {}, {}, batch)
  if baseline:
    print_table(f"train: ART·V step as configs/base.py sets it (remat="
                f"{bench.config.model.remat}, attention={bench.config.model.attention}), "
                f"batch {batch}", [baseline], TRAIN_COLUMNS)
  return baseline


def section_levers(run: Run, bench: Bench, programs: dict, names: list[str],
                   baseline: Optional[dict]) -> list[str]:
  """Each lever alone against the baseline; returns those that made the step faster."""
  batch = run.args.lever_batch
  helped = []
  for name in names:
    if not run.allows(f"levers/{name}", 5):
      continue
    row = train_variant(run, bench, programs, "levers", name, *LEVERS[name][1:], batch)
    if row is None:
      continue
    row["what"] = LEVERS[name][0]
    if baseline:
      row["speedup"] = baseline["ms_per_step"] / row["ms_per_step"]
      if row["speedup"] > 1.02 and name not in NOT_FOR_SPEED:
        helped.append(name)
    run.save()
  print_table(f"levers, one at a time, batch {batch} (compiled side by side: compile_s "
              "overlap)", run.results.get("levers", []),
              ["variant", "what", "ms_per_step", "speedup", "mfu", "footprint_gb", "compile_s",
               "error"])
  return helped


def combine(helped: list[str]) -> tuple[dict, dict]:
  """Config overrides and compiler options of the levers in ``helped``, together.

  'no_remat' wins over 'remat_dots' (a policy means nothing without remat)."""
  overrides, options = {}, {}
  for name in helped:
    if name == "remat_dots" and "no_remat" in helped:
      continue
    overrides.update(LEVERS[name][1])
    options.update(LEVERS[name][2])
  return overrides, options


def section_best(run: Run, bench: Bench, programs: dict, helped: list[str]) -> None:
  """The helpful levers together at every --batches (compiled already)."""
  args = run.args
  overrides, options = combine(helped)
  name = "+".join(helped) or "baseline"
  batches = [int(b) for b in args.batches.split(",")]
  for batch in batches:
    if run.allows(f"best/batch {batch}", 5):
      train_variant(run, bench, programs, "best", name, overrides, options, batch)
  print_table(f"best ({name}) at every batch", run.results.get("best", []),
              TRAIN_COLUMNS + ["error"])


@dataclasses.dataclass
class SampleSetup:
  bench: Bench
  models: dict  # attention -> ART·V module
  schedule: Any
  settings: Any
  prompts: Any
  decode: Callable
  latent_shape: tuple

  def params(self, dtype: str):
    """The bench's current ART·V parameters ('fp32' masters, or cast to 'bf16')."""
    import jax
    import jax.numpy as jnp
    params = self.bench.state.params  # Read now: the train steps donate the state.
    return params if dtype == "fp32" else jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)

  def carry(self, videos: int):
    import jax
    from artv_jax import sampling
    keys = jax.random.split(jax.random.key(0), videos)
    carries = jax.vmap(lambda k: sampling.initial_carry(self.latent_shape, 1, k))(keys)
    return carries if videos > 1 else jax.tree.map(lambda x: x[0], carries)

  def lower(self, dtype: str, attention: str, videos: int, chunk: int):
    import jax.numpy as jnp
    from artv_jax import sampling
    fn = sampling.sample_chunks if videos > 1 else sampling.sample_chunk
    return fn.lower(self.models[attention], self.params(dtype), self.schedule, self.settings,
                    self.prompts, self.carry(videos), jnp.int32(chunk), num_frames=chunk)


def sample_setup(run: Run, bench: Bench, attentions: list[str]) -> SampleSetup:
  import jax
  import jax.numpy as jnp
  from artv_jax import build, generate, sampling
  models = bench.trainer.models
  artv = {a: models.artv.clone(unet=models.artv.unet.clone(attention=a, remat=False))
          for a in attentions}
  settings = sampling.SamplerSettings(num_steps=run.args.steps, text_scale=7.5, ref_scale=1.5,
                                      ref_noise_level=50,
                                      prediction_type=models.schedule.prediction_type)
  dim = models.artv.unet.cross_attention_dim
  text_len = len(models.null_tokens)
  keys = jax.random.split(jax.random.key(1), 2)
  prompts = sampling.PromptTable(text=jax.random.normal(keys[0], (1, text_len, dim)),
                                 null_text=jax.random.normal(keys[1], (text_len, dim)),
                                 starts=jnp.zeros((1,), jnp.int32))
  codec = generate.latent_codec(models.vae, bench.trainer.frozen["vae"])
  decode = jax.jit(lambda z: codec.decode(z.reshape((-1,) + z.shape[-3:])))
  size = build.latent_size(models, bench.config.data.resolution)
  return SampleSetup(bench, artv, models.schedule, settings, prompts, decode,
                     (size, size, models.artv.latent_channels))


def sample_variants(args, backend: str) -> list[tuple[str, str, int]]:
  """(parameter dtype, attention, videos) of the sample section, in the order timed."""
  dtypes = args.param_dtypes.split(",")
  attentions = (args.sample_attentions.split(",") if args.sample_attentions else
                ["xla", "cudnn"] if backend == "gpu" else ["auto"])
  single = [(d, attentions[0], 1) for d in dtypes]
  single += [(dtypes[-1], a, 1) for a in attentions[1:]]
  return single + [(dtypes[-1], a, args.videos) for a in attentions]


def sample_key(dtype: str, attention: str, videos: int) -> str:
  return json.dumps(["sample", dtype, attention, videos])


def sample_video(run: Run, setup: SampleSetup, programs: dict, dtype: str, attention: str,
                 videos: int, num_frames: int) -> dict:
  """Times each chunk (generation + VAE decode) of a fresh text-to-video sample of ``videos``
  videos with a compiled chunk program; one untimed frame first (kernel loading)."""
  import jax
  import jax.numpy as jnp
  program, compile_s = programs[sample_key(dtype, attention, videos)]
  if isinstance(program, Exception):
    raise program
  params = setup.params(dtype)
  carry = setup.carry(videos)
  _, latents, _ = program(params, setup.schedule, setup.prompts, carry, jnp.int32(1))
  jax.block_until_ready(setup.decode(latents))
  end, chunk = jnp.int32(num_frames), run.args.chunk
  chunk_s = []
  while len(chunk_s) * chunk < num_frames:
    start = time.perf_counter()
    carry, latents, _ = program(params, setup.schedule, setup.prompts, carry, end)
    jax.block_until_ready(setup.decode(latents))
    chunk_s.append(time.perf_counter() - start)
  frames = videos * num_frames
  per_frame = [s / (videos * chunk) for s in chunk_s]
  return {"variant": f"{dtype} params, {attention} attention", "dtype": dtype,
          "attention": attention, "videos": videos, "frames": num_frames,
          "frames_per_s": frames / sum(chunk_s), "ms_per_frame": 1e3 * sum(chunk_s) / frames,
          "first_chunk_ms_per_frame": 1e3 * per_frame[0],
          "last_chunk_ms_per_frame": 1e3 * per_frame[-1],
          "chunk_ms_per_frame": [round(1e3 * p, 2) for p in per_frame],
          "compile_s": compile_s}


SAMPLE_COLUMNS = ["variant", "videos", "frames", "frames_per_s", "ms_per_frame",
                  "first_chunk_ms_per_frame", "last_chunk_ms_per_frame", "compile_s"]


def section_sample(run: Run, setup: SampleSetup, programs: dict,
                   variants: list[tuple[str, str, int]]) -> dict:
  """One chunk of video per variant; returns the fastest variant's (dtype, attention) per
  video count."""
  rows = []
  for dtype, attention, videos in variants:
    what = f"sample/{dtype}/{attention}/{videos} videos"
    if not run.allows(what, 10):
      continue
    try:
      rows.append(sample_video(run, setup, programs, dtype, attention, videos, run.args.chunk))
      run.add("sample", rows[-1])
    except Exception as e:  # pylint: disable=broad-except
      run.error(what, e)
  print_table(f"sample: {run.args.chunk} frames, DDIM {run.args.steps} steps, 3 branches, "
              "VAE decode", rows, SAMPLE_COLUMNS)
  fastest = {}
  for row in sorted(rows, key=lambda r: -r["ms_per_frame"]):
    fastest[row["videos"]] = (row["dtype"], row["attention"])
  return fastest


def section_long(run: Run, setup: SampleSetup, programs: dict, fastest: dict) -> None:
  for videos, (dtype, attention) in sorted(fastest.items()):
    same = [r for r in run.results.get("sample", []) if r["videos"] == videos
            and (r["dtype"], r["attention"]) == (dtype, attention)]
    estimate = run.args.long_frames * videos * same[0]["ms_per_frame"] / 1e3 if same else 0.0
    if not run.allows(f"long/{videos} videos", estimate):
      continue
    try:
      row = sample_video(run, setup, programs, dtype, attention, videos, run.args.long_frames)
      run.add("long", row)
      print_table(f"long: {run.args.long_frames} frames", [row], SAMPLE_COLUMNS)
      print(f"per-frame latency by chunk (ms): {row['chunk_ms_per_frame']}", flush=True)
    except Exception as e:  # pylint: disable=broad-except
      run.error(f"long/{videos} videos", e)


def section_torch_train(run: Run, configs: dict, compile_: bool) -> None:
  what = f"torch_train/{'torch.compile' if compile_ else 'eager'}"
  if not run.allows(what, 60 if compile_ else 5):
    return
  try:
    row = torch_train(configs, run.args.lever_batch, run.args.train_steps, compile_)
    run.add("torch_train", row)
    print_table("torch_train: diffusers UNet step", [row],
                ["variant", "batch", "ms_per_step", "examples_per_s", "first_step_s",
                 "peak_gb"])
  except Exception as e:  # pylint: disable=broad-except
    run.error(what, e)


def section_torch_sample(run: Run, configs: dict) -> None:
  for videos in (1, run.args.videos):
    if not run.allows(f"torch_sample/{videos} videos", 10):
      continue
    try:
      row = torch_sample(configs, videos, run.args.steps, 2, 7.5, 1.5)
      run.add("torch_sample", row)
      print_table("torch_sample: diffusers per-frame loop", [row],
                  ["videos", "frames_per_s", "ms_per_frame", "denoise_ms_per_frame_step",
                   "decode_ms_per_frame"])
    except Exception as e:  # pylint: disable=broad-except
      run.error(f"torch_sample/{videos} videos", e)


def ratios(run: Run) -> dict:
  """JAX against PyTorch (>1: JAX faster): step time at the same batch, frames/s."""
  out = {}
  jax_rows = [r for r in run.results.get("train", []) + run.results.get("levers", [])
              + run.results.get("best", []) if "ms_per_step" in r]
  for t in run.results.get("torch_train", []):
    same = [r for r in jax_rows if r["batch"] == t["batch"]]
    if same:
      fastest = min(same, key=lambda r: r["ms_per_step"])
      out[f"train batch {t['batch']}: torch {t['variant']} ms / jax {fastest['variant']} ms"] = (
          t["ms_per_step"] / fastest["ms_per_step"])
  for t in run.results.get("torch_sample", []):
    same = [r for r in run.results.get("sample", []) if r["videos"] == t["videos"]]
    if same:
      fastest = max(same, key=lambda r: r["frames_per_s"])
      out[f"sample {t['videos']} videos: jax ({fastest['variant']}) frames/s / torch "
          "frames/s"] = fastest["frames_per_s"] / t["frames_per_s"]
  return out


def main(argv=None):
  args = _parse_args(argv)
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # PyTorch shares the card.
  common.use_cpu_flags()
  import jax
  if args.cache_dir:
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  run = Run(args)
  sections = set(args.sections.split(","))
  backend = jax.default_backend()
  torch_compile = (args.torch_compile == "on" if args.torch_compile else backend == "gpu")
  versions = {"jax": jax.__version__}
  for name in ("jaxlib", "flax", "torch", "diffusers"):
    try:
      versions[name] = __import__(name).__version__
    except ImportError:
      versions[name] = None
  run.results["meta"].update(
      date=time.strftime("%Y-%m-%d"), commit=args.commit, backend=backend,
      device=jax.devices()[0].device_kind, device_count=jax.device_count(), small=args.small,
      versions=versions, peak_tflops=args.peak_tflops, budget_s=args.budget, args=vars(args))
  print(f"{jax.devices()[0].device_kind} ({backend}), versions {versions}, budget "
        f"{args.budget:.0f} s", flush=True)
  configs = model_configs(args.small)

  if "parity" in sections and run.allows("parity"):
    try:
      section_parity(run, configs)
    except Exception as e:  # pylint: disable=broad-except
      run.error("parity", e)

  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    bench = build_bench(args, configs, workdir)
    fresh_state(bench)
    run.results["meta"]["build_s"] = time.perf_counter() - start
    run.log("built the networks and a train state")
    programs: dict = {}

    def ready(what: str, jobs: dict, threads: int = 1) -> bool:
      """Compiles ``jobs`` (just in time) if the budget allows them, judged by the slowest
      compile so far."""
      missing = [key for key in jobs if key not in programs]
      slowest = max([seconds for _, seconds in programs.values()], default=0.0)
      waves = -(-len(missing) // max(1, threads))
      if missing and not run.allows(what, slowest * waves):
        return False
      compile_many(programs, {key: jobs[key] for key in missing}, threads)
      if missing:
        run.log(f"compiled {len(missing)} program(s) for {what}")
      return True

    batches = [int(b) for b in args.batches.split(",")]
    levers = levers_for(args, backend) if "levers" in sections else []
    helped: list[str] = []
    if sections & {"train", "levers"} and ready(
        "train", dict([train_job(bench, {}, {}, args.lever_batch)])):
      baseline = section_baseline(run, bench, programs)
      jobs = dict(train_job(bench, *LEVERS[n][1:], args.lever_batch) for n in levers)
      if jobs and ready("levers", jobs, args.compile_threads):
        helped = section_levers(run, bench, programs, levers, baseline)
    run.results["meta"]["helped"] = helped
    if "torch_train" in sections:
      section_torch_train(run, configs, compile_=False)
    variants = sample_variants(args, backend) if sections & {"sample", "long"} else []
    setup = sample_setup(run, bench, sorted({a for _, a, _ in variants}) or ["auto"])
    fastest = {}
    if "sample" in sections:
      jobs = {sample_key(d, a, v): (functools.partial(setup.lower, d, a, v, args.chunk), {})
              for d, a, v in variants}
      variants = [v for v in variants if ready(f"sample/{v}", {sample_key(*v): jobs[
          sample_key(*v)]})]
      fastest = section_sample(run, setup, programs, variants)
    if "torch_sample" in sections:
      section_torch_sample(run, configs)
    if "train" in sections:
      for batch in batches:
        if batch != args.lever_batch and ready(f"train/batch {batch}",
                                               dict([train_job(bench, {}, {}, batch)])):
          train_variant(run, bench, programs, "train", "baseline", {}, {}, batch)
      print_table("train: the baseline at every batch", run.results.get("train", []),
                  TRAIN_COLUMNS + ["error"])
    if "torch_train" in sections and torch_compile:
      section_torch_train(run, configs, compile_=True)
    if "best" in sections and helped:
      overrides, options = combine(helped)
      jobs = dict(train_job(bench, overrides, options, b) for b in batches)
      if ready("best", jobs, args.compile_threads):
        section_best(run, bench, programs, helped)
    if "long" in sections:
      section_long(run, setup, programs, fastest)
  run.results["ratios"] = ratios(run)
  stats = jax.devices()[0].memory_stats() or {}
  run.results["meta"]["jax_peak_gb"] = stats.get("peak_bytes_in_use", 0) / 2**30 or None
  run.save()
  print("\nratios (>1: JAX faster)")
  for key, value in run.results["ratios"].items():
    print(f"  {key}: {value:.2f}")
  print(f"skipped: {run.results['skipped'] or 'nothing'}; errors: "
        f"{len(run.results['errors'])}; {run.elapsed():.0f} s in all", flush=True)
  return run.results


if __name__ == "__main__":
  main()
