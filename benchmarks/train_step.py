r"""Speed of the ART·V training step (artv_jax.train), for a small and a medium config.

    python benchmarks/train_step.py                  # both configs, this machine
    python benchmarks/train_step.py --configs=small --repeats=10

For each config: median step time, examples/s, the step's model FLOPs (XLA's cost analysis of
the compiled step) and the achieved fraction of the machine's measured fp32 matmul peak
(FLOPs / time / peak). Random frames stand in for data, so only the step is timed. The
configs are configs/demo.py with the UNet resized; the ART·V parts (adapter, mask head,
noise-level embedding, text encoder, EMA, AdamW) are all in the step.
"""
import argparse
import os
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]  # common.py, configs and artv_jax.
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

# name: (UNet block_out_channels, norm groups, global batch)
CONFIGS = {
    "small": ((16, 32, 64), 8, 8),  # the demo
    "medium": ((64, 128, 256), 32, 16),
}


def benchmark(name: str, repeats: int, peak: float) -> list:
  import jax
  import numpy as np
  from artv_jax import train
  from configs import demo

  channels, groups, batch = CONFIGS[name]
  config = demo.get_config()
  config.model.unet.update(block_out_channels=channels, norm_num_groups=groups)
  config.train.batch_size = batch
  with tempfile.TemporaryDirectory() as workdir:
    trainer = train.make_trainer(config, workdir)
  state = trainer.init_state()
  size = config.data.resolution
  rng = np.random.default_rng(0)
  frames = lambda *shape: rng.uniform(-1, 1, shape).astype(np.float32)
  batch_np = {"target": frames(batch, size, size, 3), "refs": frames(batch, 1, size, size, 3),
              "anchor": frames(batch, size, size, 3),
              "caption": np.array([b"a red circle moves right on a gray background"] * batch)}
  model_batch = train.to_model_batch(trainer, batch_np)
  compiled = trainer.step_fn.lower(state, model_batch, trainer.frozen).compile()
  flops = common.xla_flops(compiled)

  holder = {"state": state}

  def step():
    holder["state"], metrics = compiled(holder["state"], model_batch, trainer.frozen)
    jax.block_until_ready(metrics)

  seconds = common.median_time(step, repeats=repeats, warmup=2)
  params = sum(x.size for x in jax.tree.leaves(state.params))
  gflops = flops / seconds / 1e9
  return [name, f"{params / 1e6:.2f}M", batch, f"{seconds * 1e3:.0f}", f"{batch / seconds:.1f}",
          f"{flops / 1e9:.1f}", f"{gflops:.1f}", f"{gflops / peak:.1%}"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="small,medium")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print("XLA_FLAGS:", common.use_cpu_flags())
  import jax
  print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()}, "
        f"load average {common.load_average():.1f}")
  peak = common.measure_matmul_peak_gflops()
  print(f"measured fp32 matmul peak: {peak:.1f} GFLOP/s")
  rows = [benchmark(name, args.repeats, peak) for name in args.configs.split(",")]
  print(common.format_table(["config", "params", "batch", "step ms", "examples/s",
                             "GFLOP/step", "GFLOP/s", "of peak"], rows))
  print(f"load average after: {common.load_average():.1f}")


if __name__ == "__main__":
  main()
