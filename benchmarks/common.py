"""Timing helpers shared by the benchmarks: medians, the machine's matmul peak, XLA FLOPs.

The benchmarks are scripts (``python benchmarks/NAME.py``), not tests. Each sets the CPU XLA
flags (:mod:`artv_jax.xla_flags`) before its first JAX computation, as ``main.py`` does.
"""
import os
import sys
import time
from typing import Any, Callable, Sequence

# The benchmarks run as scripts: make the repository's artv_jax importable without installing.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from artv_jax import xla_flags  # noqa: E402  pylint: disable=wrong-import-position


def use_cpu_flags(extra: str = "") -> str:
  """Sets ``XLA_FLAGS`` for a benchmark: the user's ``extra`` flags (space separated) first,
  then :mod:`artv_jax.xla_flags` for every flag they leave unset. Returns the result."""
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {extra}".strip()
  return xla_flags.use_cpu_flags()


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
  """Wall times in seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones.

  ``fn`` must return only when its work is done (``jax.block_until_ready`` inside for JAX).
  """
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def median(values: Sequence[float]) -> float:
  ordered = sorted(values)
  mid = len(ordered) // 2
  return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
  """Median wall time in seconds of ``fn`` (see :func:`time_calls`)."""
  return median(time_calls(fn, repeats, warmup))


def xla_flops(compiled) -> float:
  """FLOPs of a compiled JAX computation by XLA's cost analysis (``jit(f).lower(...).compile()``)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older jax: one dict per device program.
    analysis = analysis[0]
  if not analysis or "flops" not in analysis:
    raise RuntimeError("XLA's cost analysis reported no 'flops' for this computation")
  return float(analysis["flops"])


def measure_matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
  """The machine's practical fp32 peak: GFLOP/s of a jitted [n, n] @ [n, n] matmul.

  Takes the fastest of ``repeats`` calls, the closest to what the hardware can do when
  nothing else runs.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  fastest = min(time_calls(lambda: matmul(a, b).block_until_ready(), repeats, warmup=2))
  return 2 * n**3 / fastest / 1e9


def load_average() -> float:
  """The 1-minute load average: above the core count, timings are shared with others."""
  return os.getloadavg()[0]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """Plain-text table, columns right-aligned except the first."""
  cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
  fmt = lambda row: "  ".join(
      c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
  rule = "  ".join("-" * w for w in widths)
  return "\n".join([fmt(cells[0]), rule] + [fmt(row) for row in cells[1:]])
