"""Scaled dot-product attention, the core of every attention layer, lowered per backend.

``implementation`` picks the lowering (``config.model.attention``):
- 'xla': ``jax.nn.dot_product_attention`` as plain XLA ops (softmax of the whole [T, S]
  weights);
- 'cudnn': the same call with cuDNN's fused flash-attention kernel (GPU; bf16/fp16 inputs,
  head width a multiple of 8 up to 128); other shapes and dtypes take 'xla';
- 'cpu_blocked': :func:`artv_jax.kernels.cpu_blocked_attention.blocked_attention`, for XLA:CPU;
- 'auto': the backend's default (:data:`AUTO`): the blocked form on CPU, where it was
  measured fastest (README, "Speed"); XLA's ops elsewhere, until benchmarks/accelerator.py
  has measured cuDNN against them on a GPU.
"""
import jax
import jax.numpy as jnp

from artv_jax.kernels.cpu_blocked_attention import blocked_attention

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "cpu_blocked")
# What 'auto' means on each backend (module docstring).
AUTO = {"cpu": "cpu_blocked", "gpu": "xla", "tpu": "xla"}


def resolve_implementation(implementation: str, backend: str) -> str:
  """The lowering ``implementation`` stands for on ``backend`` ('auto' resolved); raises a
  ValueError naming the field for an unknown name or cuDNN off a GPU."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"config.model.attention '{implementation}' is not one of "
                     f"{IMPLEMENTATIONS}.")
  if implementation == "auto":
    return AUTO.get(backend, "xla")
  if implementation == "cudnn" and backend != "gpu":
    raise ValueError(f"config.model.attention 'cudnn' needs a GPU; this run's backend is "
                     f"'{backend}' (use 'auto').")
  return implementation


def cudnn_supports(query: jax.Array, key: jax.Array) -> bool:
  """Whether cuDNN's fused attention takes these inputs ([B, T, N, D] and [B, S, N, D])."""
  width = query.shape[-1]
  return (query.dtype in (jnp.bfloat16, jnp.float16) and key.dtype == query.dtype
          and width % 8 == 0 and width <= 128)


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          implementation: str = "auto") -> jax.Array:
  """softmax(q k^T / sqrt(D)) v, per head, without masking.

  Args:
    query: [B, T, N, D].
    key, value: [B, S, N, D].
    implementation: 'auto', 'xla', 'cudnn' or 'cpu_blocked' (module docstring).

  Returns:
    [B, T, N, D] in query's dtype. 'cpu_blocked' computes in float32 whatever the inputs.
  """
  implementation = resolve_implementation(implementation, jax.default_backend())
  if implementation == "cudnn" and not cudnn_supports(query, key):
    implementation = "xla"
  if implementation == "cpu_blocked":
    return blocked_attention(query, key, value)
  return jax.nn.dot_product_attention(query, key, value, implementation=implementation)
