"""Lowerings of the models' hot operations, chosen by config fields, kept out of the layers.

The linen layers in :mod:`artv_jax.models` read like diffusers': they call
:func:`dot_product_attention` (``config.model.attention``) and build ``nn.Dense`` with
:func:`dense_dot_general` (``config.model.dense``). Each field's 'auto' picks the fastest
measured lowering on the backend (README, "Speed"); the backend-specific kernels live here:

- :mod:`artv_jax.kernels.attention`: the attention dispatcher ('xla', 'cudnn', 'cpu_blocked');
- :mod:`artv_jax.kernels.cpu_blocked_attention`: attention a query block at a time with a
  hand-written gradient, for XLA:CPU;
- :mod:`artv_jax.kernels.dense`: the dense dispatcher ('xla', 'cpu');
- :mod:`artv_jax.kernels.cpu_dense`: a dense product whose weight gradient XLA:CPU runs on
  its fast matmul.
"""
from artv_jax.kernels.attention import dot_product_attention
from artv_jax.kernels.dense import dense_dot_general

__all__ = ["dense_dot_general", "dot_product_attention"]
