r"""The 3-D self-supervised methods side by side on the same folds: one arm against the others,
per label fraction, from the protocol workdirs that volume_protocol.py leaves.

  python benchmarks/experiments/volume_methods.py \
      --arms="SwinUNETR from SMIT=HIPPO_SU/swinunetr3d_smit_RECIPE:pretrained" \
      --arms="SwinUNETR from random=HIPPO_SU/swinunetr3d_smit_RECIPE:random" \
      --arms="UNETR from ViT-MAE=HIPPO/unetr3d_RECIPE:pretrained" \
      --arms="UNETR from random=HIPPO/unetr3d_RECIPE:random" --out=DIR/methods

Each arm is `label=protocol workdir:initialisation`; the first is tested against every other.
An arm may join the workdirs of several recipes, comma-separated (`label=W1,W2:init`), each
bringing its own fractions: the low fractions' 300-step runs and all labels' 900-step ones.
The protocol draws its folds from the data and config.seed, so runs of one fold and fraction
score the same test cases in every workdir (checked): they pair fold by fold (the paired t-test
across folds, metrics.paired_test) and case by case (Wilcoxon, metrics.case_test). Fractions
missing from an arm are left out of its rows and said so. Writes OUT.md (the table, and each
workdir's CKA per encoder stage where its report has it) and OUT.png (Dice against the
label fraction, one line per arm with its 95% CI); one summary line, and with --json the
comparison.
"""
import json
import os
import re
import sys

import numpy as np
from absl import app, flags

EXPERIMENTS = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = os.path.dirname(EXPERIMENTS)
sys.path[:0] = [EXPERIMENTS, BENCHMARKS, os.path.dirname(BENCHMARKS)]
import compare_methods  # noqa: E402  benchmarks/experiments/compare_methods.py
import output  # noqa: E402  benchmarks/output.py
from vismae_jax import figures, metrics  # noqa: E402

flags.DEFINE_multi_string("arms", [], "label=protocol workdir[,workdir...]:init (pretrained or "
                          "random); the first arm is compared with each other.")
flags.DEFINE_string("out", "", "The table and figure: OUT.md and OUT.png.")
flags.DEFINE_string("json", "", "Write the comparison here.")
flags.DEFINE_string("title", "Hippocampus, 5 folds: Dice by label fraction", "Figure title.")

RUN = re.compile(r"^(?P<init>pretrained|random)_labels(?P<pct>\d+)_fold(?P<fold>\d+)$")


def read_arm(workdirs: list[str], init: str) -> dict:
  """{fraction: {fold: result.json}} of the finished runs of `init` in protocol workdirs, a
  fraction from one workdir only (two recipes' runs of one fraction are not one arm)."""
  runs, source = {}, {}
  for workdir in workdirs:
    for name in sorted(os.listdir(os.path.join(workdir, "runs"))):
      m = RUN.match(name)
      path = os.path.join(workdir, "runs", name, "result.json")
      if not (m and m["init"] == init and os.path.exists(path)):
        continue
      fraction = f"{int(m['pct']) / 100:g}"
      if source.setdefault(fraction, workdir) != workdir:
        raise ValueError(f"{init} runs at {fraction} in both {source[fraction]} and {workdir}: "
                         "give each fraction's runs from one workdir")
      with open(path) as f:
        runs.setdefault(fraction, {})[int(m["fold"])] = json.load(f)
  return runs


def summary(by_fold: dict) -> dict:
  values = [by_fold[k]["metric"] for k in sorted(by_fold)]
  mean, low, high = metrics.mean_ci(values)
  return {"mean": mean, "ci95": [low, high], "per_fold": values,
          "hd95": float(np.nanmean([by_fold[k]["hd95"] for k in sorted(by_fold)]))}


def compare(arms: dict) -> dict:
  """{label: {fraction: {fold: result}}} -> per fraction each arm's summary and the first
  arm's tests against each other (folds both finished)."""
  first, *others = arms
  fractions = sorted({f for runs in arms.values() for f in runs}, key=float)
  out = {"subject": first, "fractions": {}, "missing": {}}
  for fraction in fractions:
    entry = {"arms": {a: summary(r[fraction]) for a, r in arms.items() if fraction in r},
             "tests": {}}
    out["missing"][fraction] = [a for a in arms if fraction not in arms[a]]
    mine = arms[first].get(fraction, {})
    for other in others:
      theirs = arms[other].get(fraction, {})
      folds = sorted(set(mine) & set(theirs))
      if len(folds) < 2:
        continue
      for k in folds:
        if mine[k]["test"] != theirs[k]["test"]:
          raise ValueError(f"fold {k} at {fraction}: {first} and {other} scored other cases")
      a = [mine[k]["metric"] for k in folds]
      b = [theirs[k]["metric"] for k in folds]
      cases = [np.concatenate([r[k]["per_case"] for k in folds]) for r in (mine, theirs)]
      entry["tests"][other] = {"folds": folds, "across_folds": metrics.paired_test(a, b),
                               "case_by_case": metrics.case_test(*cases)}
    out["fractions"][fraction] = entry
  return out


def table(comparison: dict) -> list[str]:
  first = comparison["subject"]
  lines = [f"| labels | arm | Dice (95% CI) | per fold | HD95 (mm) | {first} minus arm | "
           "p across folds (paired t) | p case by case (Wilcoxon) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for fraction, entry in comparison["fractions"].items():
    for arm, s in entry["arms"].items():
      test = entry["tests"].get(arm)
      diff = p = w = ""
      if test:
        diff = f"{test['across_folds']['mean_difference']:+.3f}"
        p = f"{test['across_folds']['p_value']:.2g}"
        w = f"{test['case_by_case']['p_value']:.2g}"
      lines.append(f"| {float(fraction):.0%} | {arm} | {s['mean']:.3f} ({s['ci95'][0]:.3f}-"
                   f"{s['ci95'][1]:.3f}) | {' / '.join(f'{v:.3f}' for v in s['per_fold'])} | "
                   f"{s['hd95']:.2f} | {diff} | {p} | {w} |")
  missing = {f: a for f, a in comparison["missing"].items() if a}
  if missing:
    lines += ["", "Not run: " + "; ".join(f"{float(f):.0%}: {', '.join(a)}"
                                          for f, a in missing.items())]
  return lines


def reuse_table(workdirs: dict) -> list[str]:
  """Each workdir's CKA per encoder stage (report.json's feature_reuse), where it has it."""
  lines = []
  for label, workdir in workdirs.items():
    with open(os.path.join(workdir, "report.json")) as f:
      reuse = json.load(f).get("feature_reuse")
    if not reuse:
      continue
    if not lines:
      stages = list(next(iter(reuse["cka"].values())))
      lines = ["| workdir | init | labels | " + " | ".join(stages) + " |",
               "| --- | --- | --- | " + " | ".join("---" for _ in stages) + " |"]
    for init, cka in reuse["cka"].items():
      lines.append(f"| {label} | {init} | {reuse['fraction']:.0%} (fold {reuse['fold']}) | "
                   + " | ".join(f"{v:.3f}" for v in cka.values()) + " |")
  return lines


def main(argv):
  del argv
  args = flags.FLAGS
  arms, workdirs = {}, {}
  for spec in args.arms:
    label, rest = spec.split("=", 1)
    joined, init = rest.rsplit(":", 1)
    arms[label] = read_arm(joined.split(","), init)
    for workdir in joined.split(","):
      workdirs.setdefault(os.path.basename(os.path.normpath(workdir)), workdir)
  comparison = compare(arms)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  reuse = reuse_table(workdirs)
  with open(args.out + ".md", "w") as f:
    f.write("\n".join(table(comparison) + ([""] + ["CKA per encoder stage, start of fine-tuning "
                                                   "against its end:", ""] + reuse if reuse
                                                  else [])) + "\n")
  curves = {}
  for fraction, entry in comparison["fractions"].items():
    for arm, s in entry["arms"].items():
      curves.setdefault(arm, []).append((compare_methods.setting_label(fraction), s["mean"],
                                         *s["ci95"]))
  figures.method_curves(curves, "Dice", args.out + ".png", args.title)
  output.write(summary_line(comparison), comparison, args.json)


def summary_line(comparison: dict) -> str:
  """'<first arm> Dice by label fraction: 5% 0.800 (vs <arm> 0.780, p=0.01 / 0.001); ...'."""
  first, parts = comparison["subject"], []
  for fraction, entry in comparison["fractions"].items():
    if first not in entry["arms"]:
      continue
    versus = ", ".join(
        f"vs {arm} {entry['arms'][arm]['mean']:.3f} p={t['across_folds']['p_value']:.2g}/"
        f"{t['case_by_case']['p_value']:.2g}" for arm, t in entry["tests"].items())
    parts.append(f"{float(fraction):.0%} {entry['arms'][first]['mean']:.3f}"
                 + (f" ({versus})" if versus else ""))
  return (f"{first} Dice by label fraction (p across folds/case by case): " + "; ".join(parts))


if __name__ == "__main__":
  app.run(main)
