"""Generic PyTorch state dict -> Flax parameter tree rules.

Our parameter trees mirror the PyTorch module names (maxdiffusion style), so converting a
state dict is a handful of rules instead of a table:

    down_blocks.0.resnets.1.conv1.weight  ->  down_blocks_0/resnets_1/conv1/kernel

* a ``.`` followed by an integer joins onto the name before it (``resnets.1`` -> ``resnets_1``);
* ``weight`` becomes ``kernel``, ``scale`` (norms) or ``embedding`` (lookup tables), whichever
  leaf the target module has;
* a ``kernel`` moves to Flax's layout: linear [out, in] -> [in, out], convolution of any
  dimension [out, in, *spatial] -> [*spatial, in, out] (Conv2d OIHW -> HWIO, Conv3d
  OITHW -> THWIO); a 1x1 conv kernel feeding a linear layer is squeezed to [in, out];
* ``bias`` stays ``bias``.

Every source key must be consumed and every target leaf filled; otherwise
:class:`CheckpointMismatchError` lists what did not match.
"""
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

_WEIGHT_LEAVES = ("kernel", "scale", "embedding")


class CheckpointMismatchError(ValueError):
  """A source state dict does not fit the target parameter tree."""

  def __init__(self, what: str, missing=(), unexpected=(), wrong_shape=()):
    lines = [f"{what}: checkpoint does not match the model."]
    if missing:
      lines.append(f"  missing keys (model parameters with no source): {sorted(missing)}")
    if unexpected:
      lines.append(f"  unexpected keys (source entries the model has no place for): "
                   f"{sorted(unexpected)}")
    for key, got, want in wrong_shape:
      lines.append(f"  wrong shape for key '{key}': checkpoint {got}, model expects {want}")
    super().__init__("\n".join(lines))
    self.missing, self.unexpected, self.wrong_shape = missing, unexpected, wrong_shape


def torch_key_to_path(key: str) -> tuple[str, ...]:
  """'a.0.b.weight' -> ('a_0', 'b', 'weight'): the module path of a PyTorch key."""
  path = []
  for part in key.split("."):
    if part.isdigit() and path:
      path[-1] = f"{path[-1]}_{part}"
    else:
      path.append(part)
  return tuple(path)


def _to_flax_layout(leaf: str, value: np.ndarray) -> np.ndarray:
  if leaf != "kernel":
    return value
  if value.ndim > 2:  # conv: [out, in, *spatial] -> [*spatial, in, out]
    return value.transpose(*range(2, value.ndim), 1, 0)
  if value.ndim == 2:  # linear: [out, in] -> [in, out]
    return value.T
  return value


def convert_state_dict(state_dict: Mapping[str, np.ndarray], target: Any, *,
                       what: str = "model") -> dict:
  """Maps a PyTorch state dict (numpy values) onto a Flax parameter tree.

  Args:
    state_dict: PyTorch names -> numpy arrays.
    target: the model's parameter tree; leaves need only ``.shape`` (``jax.eval_shape`` of
      ``init`` is enough).
    what: name of the network, used in error messages.

  Returns:
    A nested dict shaped like ``target`` holding numpy arrays in Flax layout.

  Raises:
    CheckpointMismatchError: listing every missing key, unexpected key and shape mismatch.
  """
  flat_target = traverse_util.flatten_dict(target)
  modules = {}
  for path in flat_target:
    modules.setdefault(path[:-1], set()).add(path[-1])

  out, unexpected, wrong_shape, filled = {}, [], [], set()
  for key, value in state_dict.items():
    path = torch_key_to_path(key)
    module, leaf = path[:-1], path[-1]
    leaves = modules.get(module, ())
    if leaf == "weight":
      leaf = next((name for name in _WEIGHT_LEAVES if name in leaves), "kernel")
    path = module + (leaf,)
    if path not in flat_target:
      unexpected.append(key)
      continue
    value = _to_flax_layout(leaf, np.asarray(value))
    want = tuple(flat_target[path].shape)
    if value.shape != want and value.ndim == 4 and value.shape[:2] == (1, 1) and len(want) == 2:
      value = value[0, 0]  # a 1x1 conv checkpoint feeding a linear layer (SD1 proj_in/out)
    if value.shape != want:
      wrong_shape.append((key, tuple(value.shape), want))
      continue
    out[path] = value
    filled.add(path)

  missing = ["/".join(p) for p in flat_target if p not in filled]
  if missing or unexpected or wrong_shape:
    raise CheckpointMismatchError(what, missing, unexpected, wrong_shape)
  return traverse_util.unflatten_dict(out)
