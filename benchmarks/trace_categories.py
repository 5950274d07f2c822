r"""Device time per kernel category in a jax.profiler trace: where a GPU step's time goes.

  python benchmarks/trace_categories.py TRACE_DIR

Reads the Perfetto trace (`*.trace.json.gz`) that `jax.profiler.start_trace(DIR,
create_perfetto_trace=True)` writes (train_throughput.py's `--profile`), keeps the kernels on
the device's streams (processes named `/device:...`) and sums their durations by category,
from the kernel's name and its HLO op (`args.hlo_op`): matrix products (cuBLAS, CUTLASS,
Triton GEMMs), fused attention (cuDNN), reductions (LayerNorm and softmax statistics), data
movement (transposes, copies, pads, concatenations) and the remaining elementwise fusions. A
CPU trace holds no per-kernel events, so there the answer is None.
"""
import collections
import glob
import gzip
import json
import os
import re
import sys

# First match wins: a transpose fused into a GEMM counts as the GEMM.
CATEGORIES = (
    ("attention", r"fmha|flash|sdpa|cudnn"),
    ("gemm", r"gemm|cublas|cutlass|xmma|wgmma|matmul|dot"),
    ("reduction", r"reduc|norm|softmax"),
    ("transpose/copy", r"transpose|copy|concat|slice|pad|gather|scatter|memcpy|memset"),
    ("elementwise", r"fusion|loop|convert|add|mul|select|broadcast|elementwise"),
)


def category(text: str) -> str:
  for name, pattern in CATEGORIES:
    if re.search(pattern, text, re.IGNORECASE):
      return name
  return "other"


def breakdown(trace_dir: str, top: int = 10):
  """{"device_ms", "categories": {name: {"ms", "share"}}, "top_kernels": [[name, ms], ...]}
  over every trace under `trace_dir`, or None when no trace has device kernels."""
  per_category, per_kernel = collections.Counter(), collections.Counter()
  for path in glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True):
    with gzip.open(path) as f:
      trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    devices = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
               and e.get("args", {}).get("name", "").startswith("/device:")}
    for e in events:
      if e.get("ph") == "X" and e.get("pid") in devices:
        op = e.get("args", {}).get("hlo_op", "")
        per_category[category(f"{e['name']} {op}")] += e.get("dur", 0) / 1e3
        per_kernel[e["name"]] += e.get("dur", 0) / 1e3
  total = sum(per_category.values())
  if not total:
    return None
  return {"device_ms": total,
          "categories": {name: {"ms": ms, "share": ms / total}
                         for name, ms in per_category.most_common()},
          "top_kernels": [[name, ms] for name, ms in per_kernel.most_common(top)]}


if __name__ == "__main__":
  print(json.dumps(breakdown(sys.argv[1]), indent=1))
