"""The checkpoints of a training run, ``WORKDIR/checkpoints/STEP``: the whole train state with
the input pipeline's position, or one parameter tree read alone (sampling, evaluation).

Targets are trees of ``jax.ShapeDtypeStruct`` with shardings: every array is read straight
into its shards on every process, never whole on one device or one host.
"""
from typing import Any, Optional

from etils import epath
import orbax.checkpoint as ocp

from artv_jax import paths

STATE = "state"  # the item of the train state in each step's folder
DATA = "data"  # the item of the input pipeline's position


def checkpoint_manager(workdir: paths.PathLike, keep: int) -> ocp.CheckpointManager:
  """The run's manager: asynchronous saves, the last ``keep`` steps kept."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                         create=True)
  return ocp.CheckpointManager(paths.resolve(workdir) / "checkpoints", options=options)


def latest_step(workdir: paths.PathLike) -> Optional[int]:
  """The newest step saved in ``workdir``, or None."""
  folder = paths.resolve(workdir) / "checkpoints"
  if not folder.is_dir():
    return None
  return max(ocp.utils.checkpoint_steps(folder), default=None)


def restore_state(manager: ocp.CheckpointManager, step: int, target: Any,
                  data: Optional[ocp.args.CheckpointArgs] = None) -> Any:
  """The train state of ``step`` laid out as ``target``; with ``data`` (the pipeline's restore
  args), the input iterator moves to the checkpoint's position too."""
  items = {STATE: ocp.args.StandardRestore(target)}
  if data is not None:
    items[DATA] = data
  return manager.restore(step, args=ocp.args.Composite(**items))[STATE]


def restore_params(workdir: paths.PathLike, step: int, field: str, target: Any) -> Any:
  """The parameter tree ``field`` ('params' or 'ema_params') of the train state of ``step``,
  laid out as ``target``, read alone: the optimiser state is never read."""
  target = {field: target}
  args = ocp.args.PyTreeRestore(
      target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True)
  with ocp.PyTreeCheckpointer() as checkpointer:
    path = epath.Path(paths.resolve(workdir)) / "checkpoints" / str(step) / STATE
    return checkpointer.restore(path, args=args)[field]
