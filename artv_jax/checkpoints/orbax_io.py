"""Saving and restoring parameter trees with orbax.

Orbax writes a checkpoint into a temporary directory and renames it into place once every
array is on disk, so an interrupted save never leaves a checkpoint that looks complete. Paths
may be URIs (gs://...), which orbax reads and writes itself.
"""
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from artv_jax import paths


def save_params(path: paths.PathLike, params: Any) -> None:
  """Writes ``params`` (a pytree of numpy or jax arrays) as a new orbax checkpoint at ``path``.

  Raises:
    FileExistsError: if ``path`` exists (a checkpoint is never overwritten in place).
  """
  path = paths.resolve(path)  # Orbax wants local paths absolute.
  if path.exists():
    raise FileExistsError(f"{path} exists; save the parameters to a new path")
  with ocp.StandardCheckpointer() as checkpointer:  # Leaving the block waits for the write.
    checkpointer.save(path, params)


def restore_params(path: paths.PathLike, target: Optional[Any] = None) -> Any:
  """Reads a checkpoint written by :func:`save_params`.

  Args:
    path: the checkpoint directory.
    target: None to get the arrays as saved (numpy arrays if numpy arrays were saved), or a
      pytree with the saved structure whose leaves are arrays or ``jax.ShapeDtypeStruct``:
      each array is then restored as a ``jax.Array`` of the leaf's dtype (a cast, e.g. to
      bfloat16) and sharding (the default device where the leaf has none).

  Raises:
    FileNotFoundError: if ``path`` holds no checkpoint.
  """
  path = paths.resolve(path)
  if not path.is_dir():
    raise FileNotFoundError(f"no orbax checkpoint at {path}")
  if target is not None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                          sharding=getattr(leaf, "sharding", None) or device),
        target)
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path, target)
