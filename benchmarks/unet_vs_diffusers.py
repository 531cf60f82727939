r"""One UNet training step (forward + backward, fp32): artv_jax (jitted) against diffusers.

    python benchmarks/unet_vs_diffusers.py                 # the default SD-shaped config
    python benchmarks/unet_vs_diffusers.py --batch 4 --no-torch-compile

Both sides run the same UNet2DConditionModel config with the same weights (the diffusers
model's, converted; the script checks the two forward passes agree) on the same batch, and
compute the gradient of an MSE loss w.r.t. every parameter. Prints the median step time of
JAX, PyTorch eager (NCHW and channels-last) and ``torch.compile`` (when it works here), the
speed of each relative to eager PyTorch, and each side's GFLOP/s as a fraction of the
machine's measured fp32 matmul peak. The FLOPs are XLA's cost analysis of the jitted step,
used for both sides (the same math).

The XLA:CPU flags of :mod:`artv_jax.xla_flags` are set before JAX starts; ``--xla-flags``
adds more, or overrides them (``--xla-flags=--xla_cpu_experimental_ynn_fusion_type=`` turns
YNNPACK off). Timings on a shared machine are noisy: JAX and PyTorch steps are
interleaved, round by round, so a load change hits both alike, and the script prints the
load average before and after.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

# The SD UNet's layout (SD1: channels 320, 640, 1280, 1280; 768-wide text) scaled down 5x so
# that a step takes a fraction of a second on 2 CPU cores. Heads are 32 wide at every level
# (SD1's are 40-160, SD2's 64): SD1's fixed 8 heads on 64 channels would be 8 wide.
CONFIG = dict(
    sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(64, 128, 256, 256),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                    "CrossAttnUpBlock2D"),
    attention_head_dim=(2, 4, 8, 8), cross_attention_dim=256, norm_num_groups=32)
TEXT_TOKENS = 77


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=7,
                      help="timed steps per variant (interleaved); the median is reported")
  parser.add_argument("--im2col", action="store_true",
                      help="lower every JAX convolution as im2col + matmul (for comparison)")
  parser.add_argument("--remat", action="store_true", help="gradient checkpointing per block")
  parser.add_argument("--xla-flags", default="", help="extra XLA_FLAGS, space separated")
  parser.add_argument("--no-torch-compile", dest="torch_compile", action="store_false",
                      help="skip torch.compile (its compilation takes minutes on 2 cores)")
  parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  return parser.parse_args()


def _inputs(batch: int, seed: int = 0):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  size = CONFIG["sample_size"]
  return dict(
      sample=rng.standard_normal((batch, size, size, CONFIG["in_channels"]), np.float32),
      timesteps=rng.integers(0, 1000, (batch,)).astype(np.int32),
      context=rng.standard_normal((batch, TEXT_TOKENS, CONFIG["cross_attention_dim"]),
                                  np.float32),
      target=rng.standard_normal((batch, size, size, CONFIG["out_channels"]), np.float32))


def im2col_patches(x, kernel_size: int, strides: int, padding):
  """The kernel-sized windows of x, side by side in the channels.

  x: [B, H, W, C] -> [B, H', W', kernel_size**2 * C], channel index (i * kernel_size + j) * C
  + c for window offset (i, j): the order of a HWIO kernel reshaped to [k*k*C, C_out].
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from artv_jax.models.conv import explicit_padding  # pylint: disable=g-import-not-at-top
  (top, bottom), (left, right) = explicit_padding(padding)
  x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  _, height, width, _ = x.shape
  out_h = (height - kernel_size) // strides + 1
  out_w = (width - kernel_size) // strides + 1
  windows = [x[:, i:i + strides * (out_h - 1) + 1:strides, j:j + strides * (out_w - 1) + 1:strides]
             for i in range(kernel_size) for j in range(kernel_size)]
  return windows[0] if len(windows) == 1 else jnp.concatenate(windows, axis=-1)


def im2col_conv2d(x, kernel, strides: int = 1, padding=0):
  """:func:`artv_jax.models.conv.conv2d` as ``im2col_patches(x) @ kernel``, one matmul (same
  result up to float rounding, gradients included): x [B, H, W, C_in], kernel [k, k, C_in,
  C_out] -> [B, H', W', C_out]. For XLA builds whose convolutions lag their matmuls; with
  jaxlib 0.10 on CPU the patch copies and their col2im gradient cost more than they save."""
  patches = im2col_patches(x, kernel.shape[0], strides, padding)
  return patches @ kernel.reshape(-1, kernel.shape[-1])


def _jax_step(torch_state_dict: dict, inputs: dict, remat: bool, im2col: bool):
  """Returns (step() -> blocks until done, the jitted step's FLOPs, forward(sample) [NHWC])."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from artv_jax.checkpoints.rename import convert_state_dict  # pylint: disable=g-import-not-at-top
  from artv_jax.models import conv as conv_lib  # pylint: disable=g-import-not-at-top
  from artv_jax.models.unet import UNet2DConditionModel  # pylint: disable=g-import-not-at-top

  if im2col:  # Every Conv2D inside calls conv_lib.conv2d while tracing: swap the lowering.
    conv_lib.conv2d = im2col_conv2d
  model = UNet2DConditionModel.from_config(CONFIG, remat=remat)
  x, t, ctx = inputs["sample"], inputs["timesteps"], inputs["context"]
  shapes = jax.eval_shape(model.init, jax.random.key(0), x, t, ctx)["params"]
  params = jax.device_put(convert_state_dict(torch_state_dict, shapes))

  def loss_fn(params, x, t, ctx, target):
    return jnp.mean((model.apply({"params": params}, x, t, ctx) - target) ** 2)

  step = jax.jit(jax.value_and_grad(loss_fn))
  args = [jax.device_put(inputs[k]) for k in ("sample", "timesteps", "context", "target")]
  flops = common.xla_flops(step.lower(params, *args).compile())
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x, t, ctx))
  return (lambda: jax.block_until_ready(step(params, *args)), flops,
          lambda: forward(params, x))


def _torch_steps(model, inputs: dict, compile_: bool):
  """Returns {name: step()} for eager NCHW, eager channels-last and (maybe) torch.compile."""
  import torch  # pylint: disable=g-import-not-at-top
  nchw = lambda a: torch.from_numpy(a.transpose(0, 3, 1, 2).copy())
  x, target = nchw(inputs["sample"]), nchw(inputs["target"])
  t = torch.from_numpy(inputs["timesteps"]).long()
  ctx = torch.from_numpy(inputs["context"])

  def make_step(net, x, target):
    def step():
      net.zero_grad(set_to_none=True)
      loss = torch.mean((net(x, t, ctx).sample - target) ** 2)
      loss.backward()
    return step

  steps = {"pytorch eager (NCHW)": make_step(model, x, target)}
  cl_model = _clone(model).to(memory_format=torch.channels_last)
  steps["pytorch eager (channels_last)"] = make_step(
      cl_model, x.to(memory_format=torch.channels_last),
      target.to(memory_format=torch.channels_last))
  if compile_:
    compiled = make_step(torch.compile(_clone(model)), x, target)
    try:
      print("torch.compile: compiling forward and backward (minutes on 2 cores)...", flush=True)
      compiled()
      steps["pytorch torch.compile"] = compiled
    except Exception as e:  # pylint: disable=broad-except
      print(f"torch.compile failed here, skipped: {type(e).__name__}: {str(e)[:300]}")
  return steps


def _clone(model):
  import copy  # pylint: disable=g-import-not-at-top
  return copy.deepcopy(model)


def main():
  args = _parse_args()
  flags = common.use_cpu_flags(args.xla_flags)
  import diffusers  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(args.threads)
  load_before = common.load_average()
  print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), diffusers {diffusers.__version__}")
  print(f"XLA_FLAGS={flags!r}")
  print(f"UNet: block_out_channels={CONFIG['block_out_channels']}, layers_per_block="
        f"{CONFIG['layers_per_block']}, heads={CONFIG['attention_head_dim']}, text "
        f"{TEXT_TOKENS}x{CONFIG['cross_attention_dim']}; batch {args.batch}, latents "
        f"{CONFIG['sample_size']}x{CONFIG['sample_size']}x{CONFIG['in_channels']}, fp32, "
        f"remat={args.remat}, convolutions {'im2col' if args.im2col else 'native'}")

  torch.manual_seed(0)
  torch_model = diffusers.UNet2DConditionModel(**CONFIG).train()
  with torch.no_grad():  # Off the init (zeroed output conv), so every gradient is nonzero.
    for p in torch_model.parameters():
      p.add_(0.02 * torch.randn_like(p))
  state_dict = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  inputs = _inputs(args.batch)

  jax_step, flops, jax_forward = _jax_step(state_dict, inputs, args.remat, args.im2col)
  with torch.no_grad():
    ref = torch_model(torch.from_numpy(inputs["sample"].transpose(0, 3, 1, 2).copy()),
                      torch.from_numpy(inputs["timesteps"]).long(),
                      torch.from_numpy(inputs["context"])).sample.numpy()
  diff = np.abs(np.asarray(jax_forward()).transpose(0, 3, 1, 2) - ref).max()
  print(f"same model on both sides: forward max |jax - torch| = {diff:.2e} "
        f"(output scale {np.abs(ref).max():.2f})")

  steps = {"jax jit": jax_step, **_torch_steps(torch_model, inputs, args.torch_compile)}
  for step in steps.values():  # Compile / warm up everything before timing anything.
    step()
    step()
  times = {name: [] for name in steps}
  for _ in range(args.rounds):
    for name, step in steps.items():
      times[name] += common.time_calls(step, repeats=1, warmup=0)
  peak = common.measure_matmul_peak_gflops()
  load_after = common.load_average()

  eager = min(common.median(times[n]) for n in steps if n.startswith("pytorch eager"))
  rows = []
  for name in steps:
    t = common.median(times[name])
    rows.append([name, f"{t * 1e3:.0f}", f"{min(times[name]) * 1e3:.0f}", f"{eager / t:.2f}x",
                 f"{flops / t / 1e9:.0f}", f"{flops / t / 1e9 / peak:.0%}"])
  print(f"\nstep FLOPs (XLA cost analysis, forward+backward): {flops / 1e9:.1f} GFLOP; "
        f"matmul peak (jitted 2048^2 fp32): {peak:.0f} GFLOP/s; {args.rounds} rounds; "
        f"load average {load_before:.1f} before, {load_after:.1f} after "
        f"({os.cpu_count()} cores)")
  print(common.format_table(
      ["variant", "median ms", "min ms", "speed vs eager", "GFLOP/s", "of peak"], rows))
  print("(speed vs eager: the faster eager PyTorch median / this median; >1 is faster)")


if __name__ == "__main__":
  main()
