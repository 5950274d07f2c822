#!/usr/bin/env bash
# The label-efficiency experiment at the paper's scale (224 px, the release's models, bf16) in
# about 10 minutes of one GPU: benchmarks/results/label_efficiency_gpu/PLAN.md gives the plan
# and its extrapolated device time.
#
#   bash benchmarks/gpu_label_efficiency.sh pack     # on a machine with the datasets and
#                                                    # internet: what the GPU machine lacks
#   bash benchmarks/gpu_label_efficiency.sh          # on the GPU machine, with this checkout
#                                                    # and .gpu/, .whl/ copied over: $OUT
#   TINY=1 bash benchmarks/gpu_label_efficiency.sh   # every step with the tiny variant, on a CPU
#
# pack copies the BUSI and chest X-ray images into .gpu/datasets, less the 256 files that the
# bundled sample holds byte for byte (the working tree carries them already; the run copies
# them back and checks every file against the datasets' SHA256SUMS), and downloads into .whl/
# the wheels (Python 3.12) of the packages the GPU image lacks.
# The run installs those wheels, then label_efficiency.py --variant=full pretrains for
# PRETRAIN_EPOCHS epochs, exports the weights to PyTorch in a CPU process (they stay in the
# scratch folder: over the size of what comes back) and fine-tunes both BUSI tasks at
# FRACTIONS of the labels from the pretrained and from random weights, first on MIN_FOLDS
# folds, then on one more fold at a time while the next is predicted to end before DEADLINE_S
# seconds after the start. Everything resumes: a rerun on the same (warm) machine goes on
# where the last one stopped. What comes back in $OUT: label_efficiency.json, results.tar.gz
# (reports, curves, overlays, reconstructions, per-run results, logs, stage times),
# summary.txt (the table printed last) and, when small enough to copy back next time, the
# persistent compilation cache (compile_cache.tar.gz; unpack it into .gpu/scratch/compile_cache).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TINY=${TINY:-0}
PYTHON=${PYTHON:-python3}
if [[ $TINY == 1 ]]; then
  VARIANT=tiny PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-0} MAX_FOLDS=${MAX_FOLDS:-3}
  DEADLINE_S=${DEADLINE_S:-3600} SCRATCH=${SCRATCH:-$ROOT/.gpu/scratch_tiny}
else
  VARIANT=full PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-60} MAX_FOLDS=${MAX_FOLDS:-5}
  DEADLINE_S=${DEADLINE_S:-555} SCRATCH=${SCRATCH:-$ROOT/.gpu/scratch}
fi
FINETUNE_EPOCHS=${FINETUNE_EPOCHS-busi_seg:30}  # the classifier keeps the release's 50
FRACTIONS=${FRACTIONS:-0.1,1.0}
MIN_FOLDS=${MIN_FOLDS:-2}
DATASETS=${DATASETS:-$ROOT/.gpu/datasets}
OUT=${OUT:-$(mktemp -d)}

# "SAMPLE_FILE FILE" for each file of the SHA256SUMS $1 that the bundled sample holds.
in_sample() {
  awk 'NR == FNR {sample[$1] = $2; next} $1 in sample {print sample[$1], $2}' \
      <(sha256sum "$ROOT"/data_pipelines/sample/*/*) "$1"
}

pack() {
  local source=${SOURCE:-$ROOT/../shared/datasets} name
  for name in busi chest_xray_pneumonia; do
    rm -rf ".gpu/datasets/$name" && mkdir -p ".gpu/datasets/$name"
    cp -r "$source/$name/." ".gpu/datasets/$name/" && chmod -R u+w ".gpu/datasets/$name"
    (cd ".gpu/datasets/$name" && in_sample SHA256SUMS | while read -r _ file; do rm "$file"; done)
  done
  "$PYTHON" -m pip download -q --only-binary=:all: --no-deps --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
      -d .whl -r benchmarks/gpu_requirements.txt
  local tree
  tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)
  du -sb .whl .gpu/datasets | awk -v tree="$tree" '
      {total += $1; printf "%-14s %6.1f MiB\n", $2, $1 / 2^20}
      END {printf "%-14s %6.1f MiB\ncarried        %6.1f MiB of 64\n", "working tree", tree / 2^20,
           (total + tree) / 2^20}'
}

# The datasets whole again: the sample's copies back in place, every file checked.
restore() {
  local sums
  for sums in "$DATASETS"/*/SHA256SUMS; do
    [[ -f $sums ]] || continue
    (cd "$(dirname "$sums")" && in_sample SHA256SUMS | while read -r from file; do
       [[ -e $file ]] || cp "$from" "$file"
     done && sha256sum -c --quiet SHA256SUMS)
  done
}

install_wheels() {
  if ! "$PYTHON" -c "import grain, array_record, ml_collections, tensorboardX, cryptography" \
      2>/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$ROOT
  fi
}

# Runs "$@" as stage $1 (the rest is the command) and logs its wall-clock seconds.
stage() {
  local name=$1 start=$SECONDS status=0
  shift
  echo "[$SECONDS s] $name..."
  "$@" || status=$?
  echo "$name $((SECONDS - start)) $status" >>"$SCRATCH/logs/stages.txt"
  echo "[$SECONDS s] $name: $((SECONDS - start)) s$( ((status)) && echo ", exit status $status")"
  return $status
}

# label_efficiency.py on the first $1 folds, stopped at the deadline; when it ends, its JSON
# and reports are copied to $SCRATCH/done (a call stopped halfway leaves some reports a fold
# ahead of the JSON).
label_efficiency() {
  rm -f "$SCRATCH/label_efficiency.json"
  timeout --kill-after=20 $((DEADLINE_S > SECONDS ? DEADLINE_S - SECONDS : 1)) \
      "$PYTHON" benchmarks/experiments/label_efficiency.py --variant="$VARIANT" --datasets="$DATASETS" \
      --scratch="$SCRATCH" --max_folds="$1" --fractions="$FRACTIONS" \
      --pretrain_epochs="$PRETRAIN_EPOCHS" --finetune_epochs="$FINETUNE_EPOCHS" --export \
      --json="$SCRATCH/label_efficiency.json" 2>"$SCRATCH/logs/folds$1.log" || return
  cp "$SCRATCH/label_efficiency.json" "$SCRATCH/logs/folds$1.json"
  rm -rf "$SCRATCH/done" && mkdir "$SCRATCH/done"
  (cd "$SCRATCH" && cp --parents label_efficiency.json busi_*/report.* busi_*/*.png \
      pretrain/reconstructions.png done/)
}

# Seconds that one more fold is predicted to take: the last call's fine-tuning time per new
# fold (with its start-up; the first call's compilations make it an overestimate) plus 10%.
next_fold_seconds() {
  "$PYTHON" - "$SCRATCH" "$1" <<'EOF'
import json, sys
scratch, new_folds = sys.argv[1], int(sys.argv[2])
with open(f"{scratch}/label_efficiency.json") as f:
  seconds = json.load(f)["stage_seconds"]
_, wall, _ = open(f"{scratch}/logs/stages.txt").read().splitlines()[-1].split()  # that call
wall = float(wall)
print(int(1.1 * (wall - seconds["ingest"] - seconds["pretraining"]) / new_folds))
EOF
}

# $OUT: the last finished call's JSON and reports, with the logs and every run's results and
# curves in one archive; the compilation cache too if it is small enough to come back.
package() {
  shopt -s nullglob
  cp "$SCRATCH/done/label_efficiency.json" "$OUT/" 2>/dev/null || true
  (cd "$SCRATCH/pretrain/export" 2>/dev/null && sha256sum model.* >../../logs/export.sha256) || true
  local cache
  cache=$(du -sb "$SCRATCH/compile_cache" 2>/dev/null | cut -f1) || true
  echo "compile_cache ${cache:-0} bytes" >"$SCRATCH/logs/compile_cache.txt"
  (
    cd "$SCRATCH"
    paths=()  # those there are: a call that failed early leaves its logs only
    for path in done logs runs.log pretrain/export.log pretrain/metrics.jsonl \
        busi_*/runs/*/result.json busi_*/runs/*/metrics.jsonl; do
      if [[ -e $path ]]; then paths+=("$path"); fi
    done
    tar -czf "$OUT/results.tar.gz" "${paths[@]}"
  )
  if ((${cache:-0} && cache < 64 * 2 ** 20)); then
    tar -czf "$SCRATCH/compile_cache.tar.gz" -C "$SCRATCH" compile_cache
    if (($(stat -c %s "$SCRATCH/compile_cache.tar.gz") < 15 * 2 ** 20)); then
      cp "$SCRATCH/compile_cache.tar.gz" "$OUT/"
    fi
  fi
}

summary() {
  "$PYTHON" - "$SCRATCH" "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null \
      | head -1 || true)" <<'EOF'
import json, os, sys
scratch, device = sys.argv[1], sys.argv[2] or "no GPU"
stages = [line.split() for line in open(f"{scratch}/logs/stages.txt")]
print(f"Device: {device}. Stages (s): "
      + ", ".join(f"{n} {s}" + (f" (exit {c})" if c != "0" else "") for n, s, c in stages))
path = f"{scratch}/done/label_efficiency.json"
if not os.path.exists(path):
  sys.exit("No label_efficiency.json: no call finished (a rerun resumes).")
r = json.load(open(path))
p = r["pretraining"]
length = f"{p['total_steps']} steps" if p["total_steps"] else f"{p['num_epochs']:g} epochs"
print(f"{r['variant']} variant at {r['image_size']} px: pretraining {length} of batch "
      f"{p['batch_size']}; {r['max_folds']} folds; stage seconds of the last call: "
      + ", ".join(f"{k} {v:.0f}" for k, v in r["stage_seconds"].items()))
print("task      epochs labels pretrained            random                p")
for task in ("busi_seg", "busi_cls"):
  t = r[task]
  for f in map(str, t["fractions"]):
    a, b = t["pretrained"][f], t["random"][f]
    ci = lambda e: f"{e['mean']:.3f} ({e['ci95'][0]:.3f}-{e['ci95'][1]:.3f})"
    print(f"{task:9} {t['epochs']:6g} {float(f):6.0%} {ci(a):21} {ci(b):21} "
          f"{t['p_values'][f] if t['p_values'][f] is not None else float('nan'):.3g}")
export = r.get("export", {}).get("mae", {})
print("Export: " + (", ".join(f"{k} {v:,} bytes" for k, v in export.get("files", {}).items())
                    or f"failed ({export.get('log')})"))
EOF
}

if [[ ${1:-} == pack ]]; then
  pack
  exit
fi
mkdir -p "$SCRATCH/logs" "$OUT"
OUT=$(cd "$OUT" && pwd)
: >"$SCRATCH/logs/stages.txt"
trap 'summary | tee "$OUT/summary.txt"' EXIT
stage restore restore
stage install install_wheels
folds=$MIN_FOLDS
if stage "folds$folds" label_efficiency "$folds"; then
  new=$MIN_FOLDS
  while ((folds < MAX_FOLDS)); do
    need=$(next_fold_seconds "$new") || break
    ((SECONDS + need <= DEADLINE_S)) || { echo "fold $((folds + 1)) needs ~$need s: stop"; break; }
    folds=$((folds + 1)) new=1
    stage "folds$folds" label_efficiency "$folds" || break
  done
fi
stage package package
