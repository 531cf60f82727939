"""One process of a multi-device / multi-process CPU job, and the launcher for it.

JAX fixes the number of CPU devices and the process group when it starts, so tests that need
8 devices, or several processes, run here in fresh Python processes while the rest of the
suite keeps its single device:

    results = launch("toy_train", num_processes=2, devices_per_process=2,
                     args=["--fsdp=4", "--data=1"])

Each worker joins the process group (:func:`artv_jax.parallel.initialize_distributed`,
gloo on localhost), runs ``MODES[mode]`` and prints its result as one JSON line; ``launch``
returns these per process, or raises with the workers' output when one fails or hangs. A
new multi-process check adds a function to ``MODES``.
"""
import argparse
import functools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from flax.training import train_state
from artv_jax import parallel, train

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Toy problem: small enough for 2 shared cores; with fsdp=4 the hidden kernels are sharded, the
# last kernel (below MIN_SIZE), biases and norm parameters replicated.
IN_FEATURES, HIDDEN, OUT_FEATURES = 16, 64, 6
GLOBAL_BATCH = 16
MIN_SIZE = 512

_RESULT = "RESULT_JSON "  # Marks the result line among JAX's log output.


class ToyMLP(nn.Module):

  @nn.compact
  def __call__(self, x):  # x: [B, IN_FEATURES] -> [B, OUT_FEATURES]
    x = nn.gelu(nn.Dense(HIDDEN)(x))
    x = nn.LayerNorm()(x)
    x = nn.gelu(nn.Dense(HIDDEN)(x))
    return nn.Dense(OUT_FEATURES)(x)


def toy_batch(step: int) -> dict[str, np.ndarray]:
  """The global batch of a step, the same on every process."""
  rng = np.random.default_rng(step)
  return {"x": rng.normal(size=(GLOBAL_BATCH, IN_FEATURES)).astype(np.float32),
          "y": rng.normal(size=(GLOBAL_BATCH, OUT_FEATURES)).astype(np.float32)}


def toy_train_step(state: train_state.TrainState, batch, mesh: jax.sharding.Mesh):
  def loss_fn(params):
    params = parallel.gather_params(params, mesh)
    pred = state.apply_fn({"params": params}, batch["x"])
    return jnp.mean((pred - batch["y"])**2)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return state.apply_gradients(grads=grads), loss


def toy_train(mesh: jax.sharding.Mesh, steps: int) -> dict[str, Any]:
  """Trains the toy MLP on ``mesh`` the way the real trainer does; reports what came out.

  Returns the mesh shape, losses per step, the final parameters (full, as lists) and, per
  parameter, its partition spec, its Adam moment's spec and the shape of this process's first
  shard.
  """
  model = ToyMLP()
  # Host numpy weights, as if loaded from a converted checkpoint. (Jitted: eager ops are slow
  # in a multi-process run.)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, IN_FEATURES)))["params"]
  params = jax.device_get(params)
  params = parallel.shard_pytree(params, parallel.param_sharding(mesh, params, MIN_SIZE))

  def create(params):
    # eps=1e-3: Adam's update g / (|g| + eps) would turn rounding noise in near-zero gradients
    # into visible parameter differences between device layouts.
    return train_state.TrainState.create(apply_fn=model.apply, params=params,
                                         tx=optax.adamw(1e-2, eps=1e-3, weight_decay=1e-2))

  state_shardings = parallel.param_sharding(mesh, jax.eval_shape(create, params), MIN_SIZE)
  state = jax.jit(create, out_shardings=state_shardings)(params)
  step_fn = jax.jit(functools.partial(toy_train_step, mesh=mesh),
                    in_shardings=(state_shardings, parallel.batch_sharding(mesh)),
                    out_shardings=(state_shardings, parallel.replicated(mesh)),
                    donate_argnums=0)

  per_process = GLOBAL_BATCH // jax.process_count()
  mine = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
  batch = lambda step: parallel.host_local_to_global(
      jax.tree.map(lambda x: x[mine], toy_batch(step)), mesh)
  step_fn = train.compile_everywhere(step_fn, "toy train step", state, batch(0))
  losses = []
  for step in range(steps):
    state, loss = step_fn(state, batch(step))
    losses.append(float(loss))

  def flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")

  return {
      "mesh": dict(mesh.shape),
      "losses": losses,
      "params": {k: v.tolist() for k, v in flat(parallel.fetch(state.params)).items()},
      "param_specs": {k: list(v.sharding.spec) for k, v in flat(state.params).items()},
      # adamw = chain(scale_by_adam, ...): the first state holds the moments.
      "adam_mu_specs": {k: list(v.sharding.spec) for k, v in flat(state.opt_state[0].mu).items()},
      "shard_shapes": {k: list(v.addressable_shards[0].data.shape)
                       for k, v in flat(state.params).items()},
  }


def artv_batch(step: int, batch_size: int, resolution: int = 32) -> dict[str, np.ndarray]:
  """A global batch of random frames and captions for the tiny ART·V, the same everywhere."""
  rng = np.random.default_rng(step)
  frames = lambda *shape: rng.uniform(-1, 1, shape).astype(np.float32)
  return {"target": frames(batch_size, resolution, resolution, 3),
          "refs": frames(batch_size, 1, resolution, resolution, 3),
          "anchor": frames(batch_size, resolution, resolution, 3),
          "caption": np.array([b"a red circle moves right", b"a blue square moves up"]
                              * (batch_size // 2))}


def artv_train(data: int, fsdp: int, steps: int, workdir: str) -> dict[str, Any]:
  """Trains the tiny ART·V of tests/tiny_config.py with the real trainer on a (data, fsdp) mesh,
  in a ``workdir`` all processes share (process 0 writes the tokenizer there).

  Returns losses per step, the final parameters (full, as lists) and their partition specs.
  """
  from tests import tiny_config
  config = tiny_config.get_config()
  config.mesh.data, config.mesh.fsdp = data, fsdp
  trainer = train.make_trainer(config, workdir)
  state = trainer.init_state()
  per_process = config.train.batch_size // jax.process_count()
  mine = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
  batch = lambda step: train.to_model_batch(
      trainer, jax.tree.map(lambda x: x[mine], artv_batch(step, config.train.batch_size)))
  step_fn = train.compile_everywhere(trainer.step_fn, "train step", state, batch(0),
                                     trainer.frozen)
  losses = []
  for step in range(steps):
    state, metrics = step_fn(state, batch(step), trainer.frozen)
    losses.append(float(metrics["loss"]))

  flat = lambda tree: traverse_util.flatten_dict(tree, sep="/")
  return {
      "mesh": dict(trainer.mesh.shape),
      "losses": losses,
      "params": {k: v.tolist() for k, v in flat(parallel.fetch(state.params)).items()},
      "param_specs": {k: list(v.sharding.spec) for k, v in flat(state.params).items()},
  }


MODES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "toy_train": lambda a: toy_train(parallel.make_mesh(a.data, a.fsdp), a.steps),
    "artv_train": lambda a: artv_train(a.data, a.fsdp, a.steps, a.workdir),
}


def launch(mode: str, num_processes: int = 1, devices_per_process: int = 1,
           args: tuple[str, ...] = (), timeout: float = 240) -> list[dict[str, Any]]:
  """Runs ``mode`` in ``num_processes`` fresh CPU processes; returns their results in order."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([_REPO, os.environ.get("PYTHONPATH", "")]),
             XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                       f"--xla_force_host_platform_device_count={devices_per_process}")
  with tempfile.TemporaryDirectory() as shared:  # The job's workdir, and its logs.
    command = [sys.executable, os.path.abspath(__file__), f"--mode={mode}",
               f"--workdir={shared}", *args]
    if num_processes > 1:
      command += [f"--coordinator=127.0.0.1:{_free_port()}",
                  f"--num_processes={num_processes}"]
    # Output goes to files, not pipes: a worker blocked on a full pipe would stall its peers.
    paths = [os.path.join(shared, f"{i}.log") for i in range(num_processes)]
    procs = []
    for i, path in enumerate(paths):
      with open(path, "w") as log:
        procs.append(subprocess.Popen(command + [f"--process_id={i}"], env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      codes = [p.poll() for p in procs]
      # Stop at the first failure too: its peers would wait for it until the deadline.
      if all(c == 0 for c in codes) or any(codes):
        break
      time.sleep(0.1)
    for p in procs:
      p.kill()  # No-op for workers that finished.
      p.wait()
    outputs = [open(path).read() for path in paths]
  codes = [p.returncode for p in procs]
  if any(codes):
    tails = "\n".join(f"--- worker {i} (exit code {code}):\n{out[-3000:]}"
                      for i, (code, out) in enumerate(zip(codes, outputs)))
    raise RuntimeError(f"{mode}: workers exited with {codes} (-9: still running after "
                       f"{timeout} s, a hung collective or coordinator?); output:\n{tails}")
  return [json.loads(_result_line(out)[len(_RESULT):]) for out in outputs]


def _result_line(output: str) -> str:
  return [line for line in output.splitlines() if line.startswith(_RESULT)][-1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--mode", required=True, choices=sorted(MODES))
  parser.add_argument("--data", type=int, default=1)
  parser.add_argument("--fsdp", type=int, default=-1)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--workdir", help="a folder every process of the job shares")
  parser.add_argument("--coordinator", help="host:port of process 0; omit for one process")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  args = parser.parse_args()
  parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
  print(_RESULT + json.dumps(MODES[args.mode](args)), flush=True)


if __name__ == "__main__":
  main()
