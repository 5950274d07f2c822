#!/usr/bin/env bash
# The pretraining step's efficiency on one GPU (about 8 minutes on an H100 or H200): the release
# SwinMAE's step under each lever, side by side, into one JSON and a table.
#
# On a GPU machine with this checkout and its dependencies installed (`pip install -e .` and a
# CUDA build of jax: `pip install "jax[cuda12]"`):
#   bash benchmarks/gpu_check.sh                  # results in $OUT (default /tmp/gpu_check)
# On a GPU machine without internet access, first, on a machine with it:
#   bash benchmarks/gpu_check.sh --prepare        # downloads the wheels into .whl/
# then copy the checkout, .whl/ included, over and run the first command: it installs them.
#   TINY=1 bash benchmarks/gpu_check.sh           # every stage at tiny sizes, on a CPU
#
# Stages, most important first; each is its own process (a failing lever, such as cuDNN
# refusing a shape, costs its stage only), and a stage that would start after BUDGET_S seconds
# is skipped:
#   sparse      dense (the release's masking) against sparse (uniform) and sparse with one
#               decoder block per stage, batch 256
#   attention   the einsum and XLA window attention, profiled, batch 256
#   cudnn       the same with cuDNN's fused attention, profiled
#   batch640    the paper's per-device batch with remat (whole blocks, or keeping the Dense
#               layers' outputs), einsum and cuDNN attention
#   batch512    the largest batch without remat
#   xla_flags   one run per XLA flag set below
# Writes $OUT/train_throughput_gpu.json (every stage's train_throughput.py JSON) and
# $OUT/gpu_check.log; prints the table last.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "${1:-}" = "--prepare" ]; then
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    -d .whl -r benchmarks/gpu_requirements.txt
  du -sh .whl
  exit 0
fi

OUT=${OUT:-/tmp/gpu_check}
STAGES=/tmp/gpu_check_stages
mkdir -p "$OUT" && rm -rf "$STAGES" && mkdir -p "$STAGES"
exec > >(tee "$OUT/gpu_check.log") 2>&1
if [ -d .whl ] && ! python3 -c "import grain" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1

if [ -n "${TINY:-}" ]; then
  SIZE="--preset=tiny --image_size=64 --dtype=float32 --steps=2 --warmup=1"
  BATCH=8 BIG=16 BIGGER=16 FUSED=xla BUDGET_S=${BUDGET_S:-900}
else
  SIZE="--preset=release --image_size=224 --dtype=bfloat16 --steps=10 --warmup=3"
  BATCH=256 BIG=640 BIGGER=512 FUSED=cudnn BUDGET_S=${BUDGET_S:-420}
fi
XLA_FLAG_SETS=("--xla_gpu_enable_cudnn_layer_norm=true"
               "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUDNN,CUSTOM_CALL"
               "--xla_gpu_autotune_level=4")
START=$SECONDS

stage() {  # stage NAME TREE [XLA_FLAGS] -- train_throughput.py arguments
  local name=$1 tree=$2 flags=$3
  shift 4
  if (( SECONDS - START > BUDGET_S )); then
    echo "== $name: skipped (over the ${BUDGET_S} s budget)"
    return
  fi
  echo "== $name ($(( SECONDS - START )) s in)"
  (cd "$tree/benchmarks" && PYTHONPATH="$tree${PYTHONPATH:+:$PYTHONPATH}" \
     XLA_FLAGS="$(echo ${XLA_FLAGS:-} $flags)" timeout 300 \
     python3 train_throughput.py $SIZE "$@" --json="$STAGES/$name.json") | tail -1
}

[ -n "${TINY:-}" ] || nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
stage sparse "$ROOT" "" -- --batch=$BATCH --compare=random,uniform,uniform+1-1-1
stage attention "$ROOT" "" -- --batch=$BATCH --profile="$STAGES/trace_attention" \
  --compare=random,random@model.attention=xla
stage cudnn "$ROOT" "" -- --batch=$BATCH --profile="$STAGES/trace_cudnn" \
  --compare=random@model.attention=$FUSED
stage batch640 "$ROOT" "" -- --batch=$BIG --remat --compare=random,random@model.attention=$FUSED,\
random@model.attention=$FUSED@model.remat_policy=dots_with_no_batch_dims_saveable
stage batch512 "$ROOT" "" -- --batch=$BIGGER --compare=random@model.attention=$FUSED
for i in "${!XLA_FLAG_SETS[@]}"; do
  stage "xla_flags$i" "$ROOT" "${XLA_FLAG_SETS[$i]}" -- --batch=$BATCH --compare=random
done

python3 - "$STAGES" "$OUT/train_throughput_gpu.json" "${XLA_FLAG_SETS[@]}" <<'EOF'
"""Every stage's JSON in one file, and the table: a row per stage and mode."""
import glob, json, os, sys
stages, out, flag_sets = sys.argv[1], sys.argv[2], sys.argv[3:]
merged = {}
for path in sorted(glob.glob(os.path.join(stages, "*.json")), key=os.path.getmtime):
  name = os.path.basename(path)[:-5]
  merged[name] = json.load(open(path))
  if name.startswith("xla_flags"):
    merged[name]["xla_flags"] = flag_sets[int(name[len("xla_flags"):])]
json.dump(merged, open(out, "w"), indent=1)
print(f"| stage | mode | batch | images/s | step ms | MFU | device time by kind |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for name, result in merged.items():
  for mode, m in result["modes"].items():
    mfu = f"{m['mfu']:.1%}" if m.get("mfu") else "-"
    profile = m.get("profile") or {}
    shares = ", ".join(f"{c} {v['share']:.0%}" for c, v in
                       list(profile.get("categories", {}).items())[:4])
    print(f"| {name}{' ' + result.get('xla_flags', '') if 'xla_flags' in result else ''} "
          f"| {mode} | {result['batch']} | {m['img_per_s']:.0f} | {m['step_s_median'] * 1e3:.1f} "
          f"| {mfu} | {shares or '-'} |")
EOF
