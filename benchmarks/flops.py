"""Model FLOPs of a function as XLA's cost analysis of its CPU lowering counts them.

Why the CPU lowering whatever the backend: the arithmetic is the same on every device, and a
GPU compilation's own analysis misses the matrix products that XLA hands to cuBLAS.
"""
import jax


def xla_flops(function, *args) -> float:
  """FLOPs of one call of `function` on `args` (arrays or ShapeDtypeStructs); 0 if XLA gives
  none."""
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)
  lowered = jax.jit(function).trace(*shapes).lower(lowering_platforms=("cpu",))
  return cost(lowered, "flops")


def cost(lowered_or_compiled, key: str) -> float:
  """One entry of XLA's cost analysis ("flops", "bytes accessed"), 0 where it has none; the
  analysis comes as a dict or a one-element list, depending on the JAX version."""
  analysis = lowered_or_compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float((analysis or {}).get(key, 0.0))
