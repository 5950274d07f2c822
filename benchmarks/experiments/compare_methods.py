"""Pretraining methods side by side on the same folds: what `label_efficiency.py --methods`
reports per task.

One table (each method's and random initialisation's mean with its 95% CI per label setting,
and the paired t-tests over folds of each method against MAE and against random) and one
figure (the metric against the label fraction, one line per method with its CI band; few-shot
settings in a panel beside it).
"""
from vismae_jax import figures, metrics

RANDOM = "random"


def setting_label(key: str) -> str:
  """A result's setting key ("0.1", "10 shots") as the tables write it ("10%", "10 shots")."""
  return key if key.endswith("shots") else f"{float(key):.0%}"


def _p(a: list, b: list):
  return metrics.paired_test(a, b)["p_value"] if len(a) > 1 else None


def compare(by_method: dict) -> dict:
  """{method: label_efficiency.task_result} (the first method's with the random runs; a method of
  another model, vit_mae, with its own) -> the comparison: settings, per method and for each
  random {setting: mean, ci95, per_fold}, and per method {setting: p} against its random and
  against MAE."""
  first = next(iter(by_method.values()))
  settings = first["settings"]
  out = {"metric": first["metric"], "settings": settings,
         "means": {m: r["pretrained"] for m, r in by_method.items()},
         "p_vs_random": {}, "p_vs_mae": {}}
  if first["random"]:
    out["means"][RANDOM] = first["random"]
  for method, r in by_method.items():
    folds = {s: r["pretrained"][s]["per_fold"] for s in settings}
    # A method with random runs of its own (another model: the ViT) is tested against those.
    random = r["random"] or first["random"]
    if r["random"] and r is not first:
      out["means"][f"{RANDOM} ({method})"] = r["random"]
    if random:
      out["p_vs_random"][method] = {s: _p(folds[s], random[s]["per_fold"]) for s in settings}
    if "mae" in by_method and method != "mae":
      out["p_vs_mae"][method] = {s: _p(folds[s], by_method["mae"]["pretrained"][s]["per_fold"])
                                 for s in settings}
  return out


def table(comparison: dict, title: str) -> list[str]:
  """Markdown: a row per setting and method, its mean (CI) and the two p-values."""
  fmt = lambda p: "" if p is None else f"{p:.2g}"
  lines = [f"### {title}", "", f"| labels | method | {comparison['metric']} (95% CI) | "
           "p vs random | p vs MAE |", "| --- | --- | --- | --- | --- |"]
  for s in comparison["settings"]:
    for method, means in comparison["means"].items():
      e = means[s]
      lines.append(f"| {setting_label(s)} | {method} | {e['mean']:.3f} ({e['ci95'][0]:.3f}-"
                   f"{e['ci95'][1]:.3f}) | {fmt(comparison['p_vs_random'].get(method, {}).get(s))}"
                   f" | {fmt(comparison['p_vs_mae'].get(method, {}).get(s))} |")
  return lines + [""]


def figure(comparison: dict, path: str, title: str) -> str:
  """figures.method_curves of the comparison: fractions on the curve, shots beside it."""
  curves = {method: [(setting_label(s), means[s]["mean"], *means[s]["ci95"])
                     for s in comparison["settings"]]
            for method, means in comparison["means"].items()}
  return figures.method_curves(curves, comparison["metric"], path, title)
