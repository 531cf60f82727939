r"""Memory plan on paper: per-device bytes of the ART·V train step, and what fits where.

    python benchmarks/memory_plan.py                     # SD 2.1-base, 256², fsdp = 1, 4, 8
    python benchmarks/memory_plan.py --small --devices 1,2

For each device count N (virtual CPU devices, fsdp = N) and examples per device E (--examples,
for the first N; one example for the others) a fresh process builds configs/base.py's train
step (SD 2.1-base UNet + adapter + mask head, 256² frames as precomputed-style 32×32×4
latents, 77×1024 text states, bf16 compute, fp32 AdamW + EMA), with and without remat,
compiles it and reports per device:
  parameters, optimiser state, EMA, frozen networks: the bytes of this device's shards, read
    from the shardings (exact);
  temporaries: the compiled program's ``memory_analysis().temp_size_in_bytes`` (XLA:CPU's
    buffer assignment, an estimate of what an accelerator's compiler needs): activations, and
    what does not grow with the batch (gradients, bf16 copies of the weights).
The two example counts split the temporaries into a part per example (activations) and a
fixed part. Then it extrapolates to global batch --global-batch on 8×H100 (80 GB) and a
v5p-64 slice (32 chips of 95 GB) with fsdp over every device: states / devices + fixed
temporaries + activations × examples per device, against the card's memory.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

# name: (devices, GB of memory per device)
TARGETS = {"8x H100 80GB": (8, 80.0), "v5p-64 (32 chips)": (32, 95.0)}
_RESULT = "MEMORY_PLAN_JSON "


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", default="1,4,8", help="virtual device counts (fsdp = N)")
  parser.add_argument("--examples", default="1,2",
                      help="examples per device for the first device count")
  parser.add_argument("--small", action="store_true", help="the toy networks of accelerator.py")
  parser.add_argument("--global-batch", type=int, default=256)
  parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument("--remat", default="", help=argparse.SUPPRESS)
  parser.add_argument("--worker-examples", type=int, default=1, help=argparse.SUPPRESS)
  parser.add_argument("--out", default="", help="JSON file of every figure")
  return parser.parse_args(argv)


def measure(devices: int, examples: int, remat: bool, small: bool) -> dict:
  """In a process with ``devices`` CPU devices: per-device GB of the train step's parts."""
  import jax
  import numpy as np
  import accelerator  # pylint: disable=g-import-not-at-top
  from artv_jax import train
  args = accelerator._parse_args(["--small"] if small else [])  # pylint: disable=protected-access
  configs = accelerator.model_configs(small)
  config = accelerator.train_config(args, configs, devices * examples)
  config.model.remat = remat
  config.mesh.fsdp = devices
  with tempfile.TemporaryDirectory() as workdir:
    bench = accelerator.Bench(train.make_trainer(config, workdir), config)
  trainer = bench.trainer
  gb = lambda tree: sum(
      int(np.prod(x.sharding.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
      for x in jax.tree.leaves(tree)) / 2**30
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       trainer.abstract_state, trainer.state_sharding)
  bench.state = state
  compiled = accelerator.lower_step(bench, {}, devices * examples).compile()
  memory = compiled.memory_analysis()
  return {"devices": devices, "examples": examples, "remat": remat,
          "params_gb": gb(state.params),
          "optimizer_gb": gb(state.opt_state), "ema_gb": gb(state.ema_params),
          "frozen_gb": gb(trainer.frozen),
          "temporaries_gb": memory.temp_size_in_bytes / 2**30,
          "arguments_gb": memory.argument_size_in_bytes / 2**30}


def run_worker(devices: int, examples: int, remat: bool, small: bool) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                       f"--xla_force_host_platform_device_count={devices}")
  command = [sys.executable, os.path.abspath(__file__), f"--worker={devices}",
             f"--worker-examples={examples}", f"--remat={int(remat)}"] + (
                 ["--small"] if small else [])
  out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  lines = [l for l in out.stdout.splitlines() if l.startswith(_RESULT)]
  if out.returncode or not lines:
    raise RuntimeError(f"memory plan worker ({devices} devices x {examples} examples, "
                       f"remat={remat}) failed:\n"
                       f"{(out.stdout + out.stderr)[-3000:]}")
  return json.loads(lines[-1][len(_RESULT):])


def plan(rows: list[dict], global_batch: int) -> list[dict]:
  """What fits on each TARGETS entry: states spread over all its devices (fsdp), the fixed
  temporaries, and the activations of one example (the growth from one example per device to
  the most measured) times the examples per device."""
  out = []
  for remat in (True, False):
    mine = [r for r in rows if r["remat"] == remat]
    if not mine:
      continue
    first = [r for r in mine if r["devices"] == min(r["devices"] for r in mine)]
    one, most = (min(first, key=lambda r: r["examples"]),
                 max(first, key=lambda r: r["examples"]))
    per_example = ((most["temporaries_gb"] - one["temporaries_gb"])
                   / max(1, most["examples"] - one["examples"]))
    if most is one:  # One example count: all temporaries count as activations (an upper bound).
      per_example = one["temporaries_gb"] / one["examples"]
    fixed = one["temporaries_gb"] - per_example * one["examples"]
    states = one["devices"] * (one["params_gb"] + one["optimizer_gb"] + one["ema_gb"]
                               + one["frozen_gb"])
    for name, (devices, memory) in TARGETS.items():
      examples = global_batch / devices
      need = states / devices + fixed + per_example * examples
      out.append({"target": name, "remat": remat, "fsdp": devices,
                  "examples_per_device": examples, "states_gb": states / devices,
                  "fixed_temporaries_gb": fixed, "activations_gb": per_example * examples,
                  "total_gb": need, "memory_gb": memory, "fits": need <= 0.9 * memory})
  return out


def main(argv=None):
  args = _parse_args(argv)
  if args.worker:
    common.use_cpu_flags()
    print(_RESULT + json.dumps(measure(args.worker, args.worker_examples,
                                       bool(int(args.remat)), args.small)), flush=True)
    return None
  counts = [int(n) for n in args.devices.split(",")]
  runs = [(counts[0], int(e)) for e in args.examples.split(",")] + [(n, 1) for n in counts[1:]]
  rows = [run_worker(n, e, remat, args.small) for n, e in runs for remat in (True, False)]
  columns = ["devices", "examples", "remat", "params_gb", "optimizer_gb", "ema_gb",
             "frozen_gb", "temporaries_gb"]
  print("per device, fsdp = devices:")
  print(common.format_table(columns, [[f"{r[c]:.3f}" if isinstance(r[c], float) else r[c]
                                       for c in columns] for r in rows]))
  targets = plan(rows, args.global_batch)
  columns = ["target", "remat", "fsdp", "examples_per_device", "states_gb",
             "fixed_temporaries_gb", "activations_gb", "total_gb", "memory_gb", "fits"]
  print(f"\nglobal batch {args.global_batch}, extrapolated (fits: total <= 90% of memory):")
  print(common.format_table(columns, [[f"{r[c]:.1f}" if isinstance(r[c], float) else r[c]
                                       for c in columns] for r in targets]))
  if any(t["activations_gb"] <= 0.05 * t["fixed_temporaries_gb"] for t in targets):
    print("\nnote: the compiled temporaries hardly grew (or shrank) with the examples per "
          "device, so this compiler's buffer assignment does not show the activations and the "
          "totals above are lower bounds; compile on the target accelerator for them.")
  result = {"rows": rows, "targets": targets}
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
