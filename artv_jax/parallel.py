"""Devices, mesh, shardings and multi-host start-up.

One mesh with two axes serves every scale from one CPU to a pod:

* ``data``: pure data parallelism; parameters are replicated along it.
* ``fsdp``: data parallelism whose devices also split parameters and optimiser state
  (ZeRO-3 / FSDP), so a model too big for one device still trains.

The batch is split over both axes; each parameter is split over ``fsdp`` on one dimension
chosen from its shape alone (:func:`param_sharding`). XLA inserts the all-gathers and
reduce-scatters this implies when the train step is jitted with these shardings.
"""
import glob
import importlib.util
import math
import os
import time
from typing import Any, Callable, Sequence, TypeVar

from absl import logging
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

T = TypeVar("T")
MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # The batch's leading axis is split over every device.


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           local_device_ids: Sequence[int] | None = None,
                           heartbeat_timeout: int | None = None) -> None:
  """Joins this process to a multi-process JAX run; a single process does nothing.

  ``heartbeat_timeout``: seconds after which a silent process counts as dead; every other
  process then stops with an error naming it (JAX's default when None).

  Must run before anything touches a device (``jax.devices()``, creating an array, ...).
  Chooses, in order:

  1. explicit ``coordinator_address`` (``host:port`` of process 0), with ``num_processes``
     and ``process_id``: any cluster, and the multi-process CPU tests;
  2. a SLURM step with several tasks (inside ``srun``): JAX reads the SLURM variables
     (coordinator = first host of ``SLURM_STEP_NODELIST``, ``SLURM_NTASKS``, ``SLURM_PROCID``);
  3. a Cloud TPU VM: JAX finds the pod's workers itself;
  4. otherwise one process, nothing to do.
  """
  if jax.distributed.is_initialized():
    return
  if coordinator_address is not None:
    kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id, local_device_ids=local_device_ids)
  elif _slurm_num_tasks() > 1:
    kwargs = dict(local_device_ids=local_device_ids or _slurm_local_device_ids(),
                  cluster_detection_method="slurm")
  elif _on_cloud_tpu_vm():
    kwargs = {}
  else:
    return
  # CPU devices of different processes talk through gloo (the multi-process CPU tests);
  # accelerators ignore this setting.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if heartbeat_timeout is not None:
    kwargs["heartbeat_timeout_seconds"] = heartbeat_timeout
  jax.distributed.initialize(**kwargs)


def _slurm_num_tasks() -> int:
  # SLURM_STEP_NODELIST exists only inside `srun`; a bare `sbatch` script is one process.
  if "SLURM_STEP_NODELIST" not in os.environ:
    return 1
  return int(os.environ.get("SLURM_NTASKS", "1"))


def _slurm_local_device_ids() -> list[int] | None:
  """The GPUs of this SLURM task, numbered as CUDA numbers them inside the task.

  When SLURM binds GPUs to tasks (``--gpus-per-task``, ``--gpus-per-node``) it hides the others
  (CUDA_VISIBLE_DEVICES) and CUDA renumbers the visible ones from 0, so the task's devices are
  0..n-1 whichever GPUs it got. JAX's own SLURM default, the one device SLURM_LOCALID, is
  right only when every task sees every GPU of its node; with one bound GPU per task it names
  a device that does not exist there ("invalid device ordinal").
  """
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible:
    return list(range(len(visible.split(","))))
  nodes = int(os.environ.get("SLURM_STEP_NUM_NODES", os.environ.get("SLURM_NNODES", "0")))
  if nodes == _slurm_num_tasks():  # One unbound task per node: all the node's GPUs.
    return list(range(int(os.environ.get("SLURM_GPUS_ON_NODE", "0")))) or None
  return None  # Every task sees every GPU: JAX's SLURM_LOCALID is right.


def _on_cloud_tpu_vm() -> bool:
  # libtpu plus a TPU device file (/dev/accel* up to v4, /dev/vfio/N from v5) is how a Cloud
  # TPU VM looks before any backend has started.
  has_chip = glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
  return bool(has_chip) and importlib.util.find_spec("libtpu") is not None


def make_mesh(data: int, fsdp: int, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp') mesh over all devices of all processes (or over ``devices``).

  One of ``data``, ``fsdp`` may be -1: "all remaining devices".
  """
  devices = jax.devices() if devices is None else list(devices)
  n = len(devices)
  if data == -1 and fsdp == -1:
    raise ValueError("make_mesh: only one of data, fsdp may be -1 (all remaining devices).")
  if data == -1 or fsdp == -1:
    known = fsdp if data == -1 else data
    if known < 1 or n % known:
      raise ValueError(f"make_mesh: {n} devices cannot be split into groups of {known}; "
                       f"choose data/fsdp sizes dividing {n}.")
    data, fsdp = (n // known, fsdp) if data == -1 else (data, n // known)
  if data < 1 or fsdp < 1 or data * fsdp != n:
    raise ValueError(f"make_mesh: data={data} x fsdp={fsdp} = {data * fsdp} devices, but "
                     f"there are {n}; use sizes whose product is {n}, or -1 for one of them.")
  # Auto axes: the compiler propagates shardings from the jit in/out shardings. (jax.make_mesh
  # defaults to Explicit axes, which put shardings into array types and change semantics.)
  return jax.make_mesh((data, fsdp), MESH_AXES, axis_types=(AxisType.Auto,) * 2,
                       devices=devices)


def param_sharding(mesh: Mesh, tree: Any, min_size: int = 2**14) -> Any:
  """NamedShardings for a tree of parameters (or optimiser state, or a whole train state).

  Each leaf gets :func:`fsdp_spec` of its shape. Optimiser moments have their parameter's
  shape, so applying this to the optimiser state shards each moment like its parameter.

  Args:
    mesh: mesh from :func:`make_mesh`.
    tree: pytree whose leaves have ``.shape`` (arrays, ``jax.ShapeDtypeStruct`` from
      ``jax.eval_shape``) or are Python scalars.
    min_size: leaves with fewer elements stay replicated.
  """
  num_shards = mesh.shape["fsdp"]
  return jax.tree.map(
      lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), num_shards, min_size)), tree)


def fsdp_spec(shape: Sequence[int], num_shards: int, min_size: int = 2**14) -> P:
  """Where a tensor of ``shape`` is split over the 'fsdp' axis of size ``num_shards``.

  On its largest dimension divisible by ``num_shards`` (the last such on ties: output
  features/channels). Replicated when it has fewer than ``min_size`` elements (biases, norm
  scales, step counters, small kernels: splitting them saves little memory and costs a
  collective each) or when no dimension divides.
  """
  dims = [d for d, size in enumerate(shape) if size % num_shards == 0]
  if num_shards == 1 or math.prod(shape) < min_size or not dims:
    return P()
  axis = max(reversed(dims), key=lambda d: shape[d])  # Reversed: ties go to the last dim.
  return P(*("fsdp" if d == axis else None for d in range(len(shape))))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device; other axes whole."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  """The same full value on every device (scalars, metrics, RNG keys)."""
  return NamedSharding(mesh, P())


def gather_params(params: Any, mesh: Mesh) -> Any:
  """Whole parameters for the computation inside a jitted step (the FSDP all-gather).

  Call on the (fsdp-sharded) parameters at the start of the loss function, after any cast to
  the compute dtype (so the gather moves half the bytes in bf16). Without it the compiler may
  keep weights split and split the activations along features instead, with full
  rematerialisations between the layers; the gradients come back split by the train step's
  out_shardings (a reduce-scatter).
  """
  return jax.lax.with_sharding_constraint(params, replicated(mesh))


def wait_for_all(name: str, timeout_s: float) -> None:
  """Returns when every process has called ``wait_for_all(name)`` (a no-op for one process).

  A barrier of JAX's coordination service, not a device collective: a peer still compiling,
  or building the data set, is waited for up to ``timeout_s`` instead of gloo's or NCCL's
  connect timeout. A dead peer still ends the wait, through the heartbeat timeout. Each name
  may be used once per run.
  """
  if jax.process_count() == 1:
    return
  from orbax.checkpoint import multihost
  multihost.sync_global_processes(name, timeout=int(timeout_s),
                                  barrier_sync_fn=multihost.get_barrier_sync_fn())


def first_on_process_0(name: str, fn: Callable[[], T]) -> T:
  """``fn()`` on process 0 first, then on the others once it has returned there.

  For work whose length has no bound worth guessing (building a data set of millions of
  videos): the others wait for it with no timeout (:func:`wait_until_done`).
  """
  if jax.process_index() != 0:
    wait_until_done(name, [0])
  result = fn()
  if jax.process_index() == 0:
    mark_done(name)
  return result


def mark_done(name: str) -> None:
  """Tells every process that this one has finished ``name`` (see :func:`wait_until_done`)."""
  if jax.process_count() > 1:
    from orbax.checkpoint import multihost  # pylint: disable=g-import-not-at-top
    multihost.get_jax_distributed_client().key_value_set(
        f"artv_jax/done/{name}/{jax.process_index()}", "1")


def wait_until_done(name: str, processes: Sequence[int], poll_s: float = 10.0) -> None:
  """Returns once each of ``processes`` has called ``mark_done(name)``; no-op for one process.

  Polls JAX's coordination service with no timeout: a dead or failed peer still ends the
  wait, through the heartbeat timeout. Each name may be used once per run.
  """
  if jax.process_count() == 1:
    return
  from orbax.checkpoint import multihost  # pylint: disable=g-import-not-at-top
  client = multihost.get_jax_distributed_client()
  waiting, started = list(processes), time.monotonic()
  while waiting:
    try:
      client.key_value_try_get(f"artv_jax/done/{name}/{waiting[0]}")
      waiting.pop(0)
    except jax.errors.JaxRuntimeError:  # NOT_FOUND: not done yet.
      logging.log_every_n_seconds(logging.INFO, "Waiting for process %d: %s (%.0f s).", 600,
                                  waiting[0], name, time.monotonic() - started)
      time.sleep(poll_s)


def host_local_to_global(batch: Any, mesh: Mesh) -> Any:
  """This process's slice of the batch -> global arrays split along the batch axis.

  Every process passes a different ``[B / process_count, ...]`` slice (its host's share of
  the data); the result is the ``[B, ...]`` global batch, in which each slice occupies the
  rows of that process's devices (process order for meshes from :func:`make_mesh` on CPU and
  GPU). With one process it simply places the batch on the devices.
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def shard_pytree(tree: Any, shardings: Any) -> Any:
  """Places a tree whose full value every process holds (e.g. loaded weights) on the mesh."""
  return jax.device_put(tree, shardings)


def fetch(tree: Any) -> Any:
  """Numpy copies of the arrays of ``tree`` on every process; a collective (every process must
  call it) for arrays that span processes, a plain copy for the others."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda x: np.asarray(x) if x.is_fully_addressable
                      else multihost_utils.process_allgather(x, tiled=True), tree)
