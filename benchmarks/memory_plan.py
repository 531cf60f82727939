r"""Memory plan on paper: per-device bytes of the ART·V train step, and what fits where.

    python benchmarks/memory_plan.py                   # SD 2.1-base, 256², with compiles
    python benchmarks/memory_plan.py --devices=        # the count alone, no compiles
    python benchmarks/memory_plan.py --small --devices=1,2

The train step is configs/base.py's as benchmarks/accelerator.py builds it: SD 2.1-base UNet
+ adapter + mask head, 256² frames as precomputed-style 32×32×4 latents, 77×1024 text states,
bf16 compute, fp32 AdamW + EMA, with the lowerings 'auto' picks on GPU and TPU ('xla').

Count (one process, one device, no compile):
  states      per-device bytes of parameters, AdamW state, EMA and frozen networks for any
              fsdp, from the shapes and :func:`artv_jax.parallel.fsdp_spec`, which the
              trainer's shardings use (exact);
  residuals   what the backward pass keeps: the array leaves of ``jax.vjp``'s pullback of the
              loss w.r.t. the parameters, traced (``jax.make_jaxpr``) with 1, 2 and 4
              examples, remat on (``model.remat_policy``) and off, each classed by what it
              depends on in the jaxpr: activations (the batch), weights (the parameters
              alone: bf16 casts), gathered_alias / gathered_copy (the fsdp all-gather of a
              parameter / of its cast), inputs (an argument itself). Exact at JAX's level:
              XLA's fusion may recompute a cheap elementwise residual instead of keeping it;
  transients  the largest single value of the loss's forward + backward program that grows
              with the batch, and with remat each block's own residuals (what its backward
              recomputes and holds; with a remat policy, an upper bound).
Compile (--devices: one process per count N, N virtual CPU devices, fsdp = N): the state's
bytes read from the trainer's shardings (checked against the count) and XLA:CPU's
``memory_analysis().temp_size_in_bytes``, a cross-check only: XLA:CPU's buffer assignment
hardly grows with the batch, so it does not show the activations.

Plan: per device at --global-batch on 8×H100 (80 GB) and a v5p-64 slice (32 chips of 95 GB),
for several fsdp sizes, remat on and off: the larger of the backward pass (states + gradients
+ weight residuals + (activations + transients) × examples per device) and the optimiser
update, against 90% of the memory; the fewest ``train.grad_accum_steps`` that fit where one
step does not, and the most examples per device that fit. GB are 2**30 bytes.
"""
import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

GB = 2**30
# name: (devices, GB of memory per device)
TARGETS = {"8x H100 80GB": (8, 80.0), "v5p-64 (32 chips)": (32, 95.0)}
# Part of each device's memory kept free for XLA's scratch, collectives and fragmentation.
RESERVE = 0.1
RESIDUAL_KINDS = ("activations", "weights", "gathered_copy", "gathered_alias", "inputs",
                  "constants")
_RESULT = "MEMORY_PLAN_JSON "


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", default="1,4,8",
                      help="virtual device counts (fsdp = N) to compile for; empty: none")
  parser.add_argument("--small", action="store_true", help="the toy networks of accelerator.py")
  parser.add_argument("--global-batch", type=int, default=256)
  parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument("--remat", default="", help=argparse.SUPPRESS)
  parser.add_argument("--out", default="", help="JSON file of every figure")
  return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------
# The train step's parts.


def build(small: bool, devices: int = 1):
  """(trainer, config) of the benchmark's train step for ``devices`` devices (fsdp = all)."""
  import accelerator  # pylint: disable=g-import-not-at-top
  from artv_jax import train
  args = accelerator._parse_args(["--small"] if small else [])  # pylint: disable=protected-access
  config = accelerator.train_config(args, accelerator.model_configs(small), devices)
  config.mesh.fsdp = devices
  for field in ("attention", "dense"):  # What 'auto' picks on GPU and TPU.
    if field in config.model:
      config.model[field] = "xla"
  with tempfile.TemporaryDirectory() as workdir:
    return train.make_trainer(config, workdir), config


def step_models(trainer, config, remat: bool):
  """The trainer's models with remat on or off and the accelerators' lowerings."""
  artv = trainer.models.artv
  lowering = {f: "xla" for f in ("attention", "dense") if hasattr(artv.unet, f)}
  unet = artv.unet.clone(remat=remat, remat_policy=config.model.remat_policy, **lowering)
  return trainer.models._replace(artv=artv.clone(unet=unet))


def nbytes(x) -> int:
  """Bytes of an array or abstract value (0 for PRNG keys and tokens)."""
  import numpy as np
  try:
    return int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
  except TypeError:
    return 0


def state_gb(trainer, fsdp: int, min_size: int) -> dict:
  """Per-device GB of the train state's parts and the frozen networks at ``fsdp``: each leaf
  split as :func:`artv_jax.parallel.fsdp_spec` splits it (or whole)."""
  import jax
  from artv_jax import parallel

  def gb(tree):
    total = 0
    for leaf in jax.tree.leaves(tree):
      split = any(parallel.fsdp_spec(leaf.shape, fsdp, min_size))
      total += nbytes(leaf) // (fsdp if split else 1)
    return total / GB

  s = trainer.abstract_state
  return {"params_gb": gb(s.params), "optimizer_gb": gb(s.opt_state),
          "ema_gb": gb(s.ema_params), "frozen_gb": gb(trainer.frozen)}


# ------------------------------------------------------------------------------------------
# Residuals: what jax.vjp keeps for the backward pass, classed by what it depends on.


def _called_jaxpr(eqn):
  """The jaxpr that ``eqn`` runs on its own inputs and outputs (jit, remat, custom_vjp, ...),
  or None (scan, cond, while: their inputs do not map one to one)."""
  from jax.extend import core
  for value in eqn.params.values():
    jaxpr = getattr(value, "jaxpr", value)  # ClosedJaxpr -> Jaxpr.
    if (isinstance(jaxpr, core.Jaxpr) and len(jaxpr.invars) == len(eqn.invars)
        and len(jaxpr.outvars) == len(eqn.outvars)):
      return jaxpr
  return None


class _Walk:
  """Sources ('param', 'data') and gather tags of every value of a jaxpr, through the jaxprs
  it calls; the sizes of the values that depend on the data; the remat blocks, in order."""

  def __init__(self):
    self.values = []  # (bytes, what) of every value that depends on the data, in order
    self.blocks = []  # (remat eqn, input sources, input tags)

  def run(self, jaxpr, sources, tags) -> dict:
    from jax.extend import core
    env = dict(zip(jaxpr.invars, zip(sources, tags)))
    read = lambda v: env.get(v, (frozenset(), None)) if isinstance(v, core.Var) else (
        frozenset(), None)
    for eqn in jaxpr.eqns:
      ins = [read(v) for v in eqn.invars]
      inner = _called_jaxpr(eqn)
      if eqn.primitive.name in ("remat", "remat2", "checkpoint"):
        self.blocks.append((eqn, [s for s, _ in ins], [t for _, t in ins]))
      if inner is not None:
        inner_env = self.run(inner, [s for s, _ in ins], [t for _, t in ins])
        outs = [inner_env.get(v, (frozenset(), None)) if isinstance(v, core.Var)
                else (frozenset(), None) for v in inner.outvars]
      else:
        source = frozenset().union(*(s for s, _ in ins))
        tag = None
        if eqn.primitive.name == "sharding_constraint" and source == {"param"}:
          # The fsdp gather: the parameter's own buffer at fsdp 1, unless it was cast first.
          tag = "gathered_alias" if ins[0][1] in ("params", "gathered_alias") else (
              "gathered_copy")
        outs = [(source, tag)] * len(eqn.outvars)
        if "data" in source:
          self.values += [(nbytes(v.aval), eqn, v) for v in eqn.outvars]
      env.update(zip(eqn.outvars, outs))
    return env


def residuals(fun, args: list, wrt: list[int], sources: list, tags: list) -> dict:
  """Bytes of what ``jax.vjp`` of ``fun(*args)`` w.r.t. ``args[i] for i in wrt`` keeps, by
  kind (RESIDUAL_KINDS); ``sources``/``tags``: per leaf of ``args``, as :class:`_Walk`'s."""
  import jax
  from jax.extend import core

  def saved(*args):
    def of(*diff):
      full = list(args)
      for i, d in zip(wrt, diff):
        full[i] = d
      return fun(*full)
    _, pullback = jax.vjp(of, *[args[i] for i in wrt])
    return [x for x in jax.tree.leaves(pullback) if hasattr(x, "dtype")]

  jaxpr = jax.make_jaxpr(saved)(*args).jaxpr
  if not jaxpr.outvars:
    raise RuntimeError(f"jax.vjp's pullback has no array leaves in jax {jax.__version__}: "
                       "the residuals cannot be read from it")
  env = _Walk().run(jaxpr, sources, tags)
  out = dict.fromkeys(RESIDUAL_KINDS, 0)
  seen = set()
  for v in jaxpr.outvars:
    if not isinstance(v, core.Var) or v in seen:
      continue
    seen.add(v)
    source, tag = env.get(v, (frozenset(), None))
    if v in jaxpr.invars:  # Forwarded by jax.vjp: a buffer the program holds anyway.
      kind = "inputs"
    elif "data" in source:
      kind = "activations"
    elif tag in ("gathered_alias", "gathered_copy"):
      kind = tag
    elif "param" in source:
      kind = "weights"
    else:
      kind = "constants"
    out[kind] += nbytes(v.aval)
  out["count"] = len(seen)
  return out


def loss_parts(trainer, config, remat: bool, examples: int):
  """(loss(params, frozen, batch, rng) -> scalar, its abstract arguments, and per leaf of
  them the sources and tags :class:`_Walk` starts from)."""
  import jax
  import jax.numpy as jnp
  import accelerator  # pylint: disable=g-import-not-at-top
  from artv_jax import train
  models = step_models(trainer, config, remat)
  bench = accelerator.Bench(trainer, config)
  abstract = lambda t: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), t)
  batch = abstract(accelerator.model_batch(bench, examples))
  args = [trainer.abstract_state.params, abstract(trainer.frozen), batch,
          jax.ShapeDtypeStruct((2,), jnp.uint32)]
  loss = functools.partial(train.batch_loss, models=models, config=config, mesh=trainer.mesh)
  labels = [frozenset({"param"}), frozenset(), frozenset({"data"}), frozenset({"data"})]
  sources = [label for a, label in zip(args, labels) for _ in jax.tree.leaves(a)]
  tags = [("params" if i == 0 else None) for i, a in enumerate(args)
          for _ in jax.tree.leaves(a)]
  return (lambda *a: loss(*a)[0]), args, sources, tags


def _block_name(jaxpr) -> str:
  """The module a remat block's jaxpr runs: the first part of its first named operation."""
  for eqn in jaxpr.eqns:
    name = str(eqn.source_info.name_stack)
    if name:
      return name.split("/")[0]
  return "?"


def count(trainer, config, remat: bool, examples: int) -> tuple[dict, list, list]:
  """For ``examples`` examples on one device: residual bytes by kind; the values of the whole
  step's forward and backward that depend on the data, (bytes, what) in program order; and
  each remat block's own residuals, (bytes, name) in order."""
  import jax
  import jax.numpy as jnp
  from jax.extend import core
  loss, args, sources, tags = loss_parts(trainer, config, remat, examples)
  row = {"remat": remat, "examples": examples,
         **residuals(loss, args, [0], sources, tags)}
  walk = _Walk()
  walk.run(jax.make_jaxpr(jax.value_and_grad(loss))(*args).jaxpr, sources, tags)
  values = [(size, f"{eqn.primitive.name} {v.aval.str_short()} in "
                   f"{eqn.source_info.name_stack}") for size, eqn, v in walk.values]
  forward = _Walk()
  forward.run(jax.make_jaxpr(loss)(*args).jaxpr, sources, tags)
  blocks = []
  for eqn, block_sources, _ in forward.blocks:
    inner = eqn.params["jaxpr"]
    inner = getattr(inner, "jaxpr", inner)
    avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in eqn.invars]
    wrt = [i for i, a in enumerate(avals) if jnp.issubdtype(a.dtype, jnp.inexact)]
    # The block's inputs are outer residuals already: only what it makes itself counts.
    kept = residuals(core.jaxpr_as_fun(core.ClosedJaxpr(inner, [])), avals, wrt,
                     block_sources, ["params"] * len(avals))
    blocks.append((kept["activations"] + kept["weights"] + kept["gathered_copy"],
                   _block_name(inner)))
  return row, values, blocks


def growth(small: list, large: list, examples: tuple[int, int]) -> list[dict]:
  """{'what', 'fixed', 'per_example'} (GB) of each (bytes, what) of ``small`` and ``large``:
  the same program traced with ``examples[0]`` and ``examples[1]`` examples."""
  if len(small) != len(large):
    raise RuntimeError(f"{examples[0]} and {examples[1]} examples traced {len(small)} and "
                       f"{len(large)} values: the plan needs the same program at both sizes")
  step = examples[1] - examples[0]
  return [{"what": w, "fixed": (a - (b - a) / step * examples[0]) / GB,
           "per_example": (b - a) / step / GB} for (a, w), (b, _) in zip(small, large)]


def analyse(small: bool, sizes=()) -> dict:
  """States for every fsdp size the plan needs (and ``sizes``); residuals, the largest value
  per example and the remat blocks' own residuals with remat on and off."""
  import jax
  trainer, config = build(small)
  min_size = config.mesh.min_shard_size
  sizes = sorted({1, 8, *sizes} | {n for n, _ in TARGETS.values()})
  states = {n: state_gb(trainer, n, min_size) for n in sizes}
  counts, parts, largest, blocks = [], {}, {}, {}
  for remat in (True, False):
    # 1 and 2 examples give each count's fixed and per-example parts, 4 checks that they are
    # linear; a batch of 1 traces a slightly different program (size-1 axes dropped), so the
    # value-by-value growth comes from 2 and 4.
    (one, _, _), (two, values_two, blocks_two), (four, values_four, blocks_four) = (
        count(trainer, config, remat, e) for e in (1, 2, 4))
    counts += [one, two, four]
    parts[remat] = {k: {"fixed": (2 * one[k] - two[k]) / GB,
                        "per_example": (two[k] - one[k]) / GB,
                        "error_at_4": (four[k] - 3 * two[k] + 2 * one[k]) / GB}
                    for k in RESIDUAL_KINDS}
    largest[remat] = max(growth(values_two, values_four, (2, 4)),
                         key=lambda v: v["per_example"])
    blocks[remat] = growth(blocks_two, blocks_four, (2, 4))
  return {"states": states, "counts": counts, "parts": parts, "largest_value": largest,
          "blocks": blocks, "gather_dtype": config.mesh.gather_dtype,
          "remat_policy": config.model.remat_policy, "jax": jax.__version__}


# ------------------------------------------------------------------------------------------
# Compiled cross-check: N virtual devices, fsdp = N.


def measure(devices: int, remat: bool, small: bool) -> dict:
  """In a process with ``devices`` CPU devices: per-device GB of the state (its shardings) and
  XLA:CPU's temporaries of the compiled step, one example per device."""
  import jax
  import numpy as np
  import accelerator  # pylint: disable=g-import-not-at-top
  trainer, config = build(small, devices)
  config.model.remat = remat
  bench = accelerator.Bench(trainer, config)
  gb = lambda tree: sum(
      int(np.prod(x.sharding.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
      for x in jax.tree.leaves(tree)) / GB
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       trainer.abstract_state, trainer.state_sharding)
  bench.state = state
  compiled = accelerator.lower_step(bench, {"model.remat": remat}, devices).compile()
  memory = compiled.memory_analysis()
  return {"devices": devices, "remat": remat, "params_gb": gb(state.params),
          "optimizer_gb": gb(state.opt_state), "ema_gb": gb(state.ema_params),
          "frozen_gb": gb(trainer.frozen), "temporaries_gb": memory.temp_size_in_bytes / GB}


def run_worker(devices: int, remat: bool, small: bool) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                       f"--xla_force_host_platform_device_count={devices}")
  command = [sys.executable, os.path.abspath(__file__), f"--worker={devices}",
             f"--remat={int(remat)}"] + (["--small"] if small else [])
  out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  lines = [l for l in out.stdout.splitlines() if l.startswith(_RESULT)]
  if out.returncode or not lines:
    raise RuntimeError(f"memory plan worker ({devices} devices, remat={remat}) failed:\n"
                       f"{(out.stdout + out.stderr)[-3000:]}")
  return json.loads(lines[-1][len(_RESULT):])


# ------------------------------------------------------------------------------------------
# The plan.


def device_gb(analysis: dict, fsdp: int, remat: bool, examples: float) -> dict:
  """Per-device GB of the train step at ``fsdp`` with ``examples`` per device: the backward
  pass's parts, the optimiser update's, and the larger of the two."""
  s, p = analysis["states"][fsdp], analysis["parts"][remat]
  full_params = analysis["states"][1]["params_gb"]
  states = s["params_gb"] + s["optimizer_gb"] + s["ema_gb"] + s["frozen_gb"]
  # Sharded fp32 gradients, plus at fsdp > 1 each device's whole partial gradient in the
  # gather dtype before its reduce-scatter (a bound: XLA may scatter layer by layer).
  gather_bytes = 2 if analysis["gather_dtype"] == "compute" else 4
  grads = s["params_gb"] + (full_params * gather_bytes / 4 if fsdp > 1 else 0.0)
  # Constants (neither batch nor parameters: masks of ones) go with what they scale like.
  weights = p["weights"]["fixed"] + p["gathered_copy"]["fixed"] + p["constants"]["fixed"] + (
      p["gathered_alias"]["fixed"] if fsdp > 1 else 0.0)  # At fsdp 1 the gather is a no-op.
  activations = (p["activations"]["per_example"] + p["constants"]["per_example"]) * examples
  block = max([b["fixed"] + b["per_example"] * examples for b in analysis["blocks"][remat]],
              default=0.0)
  # The largest block's backward holds its recomputed residuals; any op's backward holds its
  # largest value and that value's cotangent.
  transient = block + 2 * analysis["largest_value"][remat]["per_example"] * examples
  backward = states + grads + weights + activations + transient
  # The update: sharded gradients and one tree of updates beside the (donated) state.
  update = states + 2 * s["params_gb"]
  return {"states_gb": states, "grads_gb": grads, "weights_gb": weights,
          "activations_gb": activations, "transient_gb": transient, "backward_gb": backward,
          "update_gb": update, "total_gb": max(backward, update)}


def most_examples(analysis: dict, fsdp: int, remat: bool, budget: float) -> int:
  """The most examples per device whose step fits in ``budget`` GB (0: not one)."""
  fits = lambda e: device_gb(analysis, fsdp, remat, e)["total_gb"] <= budget
  low, high = 0, 1
  while fits(high) and high < 2**20:
    low, high = high, 2 * high
  while high - low > 1:  # fits(low), not fits(high): the total grows with the examples.
    middle = (low + high) // 2
    low, high = (middle, high) if fits(middle) else (low, middle)
  return low


def plan(analysis: dict, global_batch: int) -> list[dict]:
  """Rows (target, fsdp, remat, examples per device, GB per device, fits, the most examples per
  device that fit), and for a row that does not fit the fewest gradient-accumulation steps
  that do."""
  out = []
  for name, (devices, memory) in TARGETS.items():
    budget = (1 - RESERVE) * memory
    for fsdp in sorted({1, 8, devices}):
      for remat in (True, False):
        examples = global_batch / devices
        row = {"target": name, "fsdp": fsdp, "remat": remat, "examples_per_device": examples,
               **device_gb(analysis, fsdp, remat, examples), "memory_gb": memory}
        row["fits"] = row["total_gb"] <= budget
        row["max_examples"] = most_examples(analysis, fsdp, remat, budget)
        row["accum"], row["accum_gb"] = (1, row["total_gb"]) if row["fits"] else (None, None)
        micro = global_batch // devices
        for accum in range(2, micro + 1):
          if row["fits"]:
            break
          if micro % accum:  # Each micro-batch must still split over every device.
            continue
          need = device_gb(analysis, fsdp, remat, micro // accum)["total_gb"]
          if need <= budget:
            row["accum"], row["accum_gb"] = accum, need
            break
        out.append(row)
  return out


def _fmt(value) -> str:
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, float):
    return f"{value:.2f}"
  return "-" if value is None else str(value)


def report(analysis: dict, targets: list[dict], global_batch: int) -> str:
  """The count and the plan as plain-text tables."""
  lines = ["residuals of the loss's backward pass (GB, one device; exact, from the jaxpr):"]
  columns = ["remat", "examples", "count"] + list(RESIDUAL_KINDS)
  lines.append(common.format_table(columns, [
      [r["remat"], r["examples"], r["count"]] + [f"{r[c] / GB:.4f}" for c in columns[3:]]
      for r in analysis["counts"]]))
  lines.append("\nper example and fixed (GB; residuals from 1 and 2 examples, off_at_4: 4 "
               "examples' activations minus the line's; values and blocks from 2 and 4):")
  columns = ["remat", "activations", "activations_fixed", "off_at_4", "weights_fixed",
             "gathered_fixed", "largest_value", "largest_block", "largest_block_fixed"]
  rows = []
  for remat, p in analysis["parts"].items():
    blocks = analysis["blocks"][remat]
    block = max(blocks, key=lambda b: b["per_example"]) if blocks else None
    rows.append([remat] + [f"{v:.4f}" for v in (
        p["activations"]["per_example"], p["activations"]["fixed"],
        p["activations"]["error_at_4"], p["weights"]["fixed"] + p["gathered_copy"]["fixed"],
        p["gathered_alias"]["fixed"],
        analysis["largest_value"][remat]["per_example"])] + (
            [f"{block['per_example']:.4f} ({block['what']})", f"{block['fixed']:.4f}"]
            if block else ["-", "-"]))
  lines.append(common.format_table(columns, rows))
  for remat, value in analysis["largest_value"].items():
    lines.append(f"largest value per example, remat={remat}: {value['what']}")
  lines.append("\nstates per device (GB, exact):")
  columns = ["fsdp", "params_gb", "optimizer_gb", "ema_gb", "frozen_gb"]
  lines.append(common.format_table(columns, [
      [n] + [f"{s[c]:.3f}" for c in columns[1:]] for n, s in analysis["states"].items()]))
  lines.append(f"\nglobal batch {global_batch}, per device (fits: total <= "
               f"{1 - RESERVE:.0%} of memory; accum: fewest grad_accum_steps that fit; "
               "max_examples: the most examples per device that fit):")
  columns = ["target", "fsdp", "remat", "examples_per_device", "states_gb", "grads_gb",
             "weights_gb", "activations_gb", "transient_gb", "update_gb", "total_gb", "fits",
             "accum", "accum_gb", "max_examples"]
  lines.append(common.format_table(columns, [[_fmt(r[c]) for c in columns] for r in targets]))
  return "\n".join(lines)


def main(argv=None):
  args = _parse_args(argv)
  common.use_cpu_flags()
  if args.worker:
    print(_RESULT + json.dumps(measure(args.worker, bool(int(args.remat)), args.small)),
          flush=True)
    return None
  rows = [run_worker(int(n), remat, args.small)
          for n in filter(None, args.devices.split(",")) for remat in (True, False)]
  analysis = analyse(args.small, [r["devices"] for r in rows])
  targets = plan(analysis, args.global_batch)
  print(report(analysis, targets, args.global_batch))
  for r in rows:
    counted = analysis["states"][r["devices"]]
    r["states_match"] = all(abs(r[k] - counted[k]) < 1e-6 for k in counted)
  if rows:
    columns = ["devices", "remat", "params_gb", "optimizer_gb", "ema_gb", "frozen_gb",
               "states_match", "temporaries_gb"]
    print("\ncompiled, per device (fsdp = devices, one example each; XLA:CPU's temporaries, "
          "a cross-check):")
    print(common.format_table(columns, [[_fmt(r[c]) for c in columns] for r in rows]))
  result = {"analysis": analysis, "targets": targets, "compiled": rows}
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1, default=str)
  return result


if __name__ == "__main__":
  main()
