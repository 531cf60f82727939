"""The product inside every ``nn.Dense`` of the UNet and ART·V, lowered per backend.

``implementation`` picks the lowering (``config.model.dense``):
- 'xla': ``lax.dot_general``, flax's own (``nn.Dense`` as it is);
- 'cpu': :func:`artv_jax.kernels.cpu_dense.cpu_dot_general`, whose weight gradient runs on
  XLA:CPU's fast matmul;
- 'auto': the backend's default (:data:`AUTO`): 'cpu' on CPU, where it was measured faster
  (README, "Speed"), 'xla' elsewhere.

The layers take it as ``nn.Dense(features, dot_general=dense_dot_general(implementation))``;
every lowering computes the same product with the same parameters.
"""
from typing import Callable

import jax

from artv_jax.kernels.cpu_dense import cpu_dot_general

IMPLEMENTATIONS = ("auto", "xla", "cpu")
# What 'auto' means on each backend (module docstring).
AUTO = {"cpu": "cpu", "gpu": "xla", "tpu": "xla"}


def resolve_implementation(implementation: str, backend: str) -> str:
  """The lowering ``implementation`` stands for on ``backend`` ('auto' resolved); raises a
  ValueError naming the field for an unknown name."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"config.model.dense '{implementation}' is not one of "
                     f"{IMPLEMENTATIONS}.")
  if implementation == "auto":
    return AUTO.get(backend, "xla")
  return implementation


def dense_dot_general(implementation: str = "auto") -> Callable:
  """The ``dot_general`` for ``nn.Dense`` under ``implementation`` on this run's backend
  ('auto', 'xla' or 'cpu'; module docstring)."""
  if resolve_implementation(implementation, jax.default_backend()) == "cpu":
    return cpu_dot_general
  return jax.lax.dot_general
