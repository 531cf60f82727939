"""XLA:CPU flags for training and sampling on CPU, set by entry points before JAX starts.

XLA reads ``XLA_FLAGS`` once, when JAX initialises its first backend (at the first
computation, not at ``import jax``), so an entry point (``main.py``, a benchmark) calls
:func:`use_cpu_flags` first thing. The library never sets them on import. They only concern
XLA's CPU backend: on GPU/TPU hosts they change nothing of the accelerator programs.
"""
import os
from typing import Sequence

# jaxlib 0.10 hands dots, convolutions, elementwise ops and reductions to YNNPACK by default.
# Its reductions ran the attention softmax and the GroupNorm statistics much slower than XLA's
# own loops (figures in docs/RESULTS.md), so only dots and convolutions go to YNNPACK.
CPU_FLAGS: tuple[str, ...] = (
    "--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution",)


def use_cpu_flags(flags: Sequence[str] = CPU_FLAGS) -> str:
  """Adds ``flags`` to ``XLA_FLAGS`` and returns the result; a flag the user already set in
  ``XLA_FLAGS`` keeps the user's value. Call before JAX's first computation."""
  current = os.environ.get("XLA_FLAGS", "")
  names = {f.split("=")[0] for f in current.split()}
  added = [f for f in flags if f.split("=")[0] not in names]
  os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return os.environ["XLA_FLAGS"]
