"""Model FLOPs of a function as XLA's cost analysis of its CPU lowering counts them.

Why the CPU lowering whatever the backend: the arithmetic is the same on every device, and a
GPU compilation's own analysis misses the matrix products that XLA hands to cuBLAS.
"""
import jax


def xla_flops(function, *args) -> float:
  """FLOPs of one call of `function` on `args` (arrays or ShapeDtypeStructs); 0 if XLA gives
  none."""
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)
  analysis = jax.jit(function).trace(*shapes).lower(lowering_platforms=("cpu",)).cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis.get("flops", 0.0)) if analysis else 0.0
