"""Pictures of results: what people look at first."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vismae_jax import preprocess  # noqa: E402


def to_display(images: np.ndarray, normalization: str) -> np.ndarray:
  """Model-input units -> [0, 1] for display; masked (NaN) pixels become mid-grey."""
  if normalization == "release":
    images = images * preprocess.RELEASE_STD + preprocess.RELEASE_MEAN
  images = np.clip(np.nan_to_num(images, nan=0.5), 0.0, 1.0)
  return images[..., 0] if images.shape[-1] == 1 else images


def image_grid(rows: dict[str, np.ndarray], path: str, title: str = "") -> str:
  """One row per entry of `rows` (name -> (N, H, W[, 3]) in [0, 1]), one column per image."""
  names = list(rows)
  n = len(rows[names[0]])
  fig, axes = plt.subplots(len(names), n, figsize=(1.6 * n, 1.7 * len(names)), squeeze=False)
  for r, name in enumerate(names):
    for i in range(n):
      ax = axes[r, i]
      ax.imshow(rows[name][i], cmap="gray", vmin=0.0, vmax=1.0)
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_ylabel(name)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def label_efficiency_curve(summary: dict, path: str) -> str:
  """Metric against label fraction, one line per initialisation, with its 95% CI band."""
  fig, ax = plt.subplots(figsize=(5, 3.6))
  fractions = summary["fractions"]
  for init, colour in (("pretrained", "tab:blue"), ("random", "tab:orange")):
    points = [(f, summary["by_fraction"][str(f)][init]) for f in fractions
              if init in summary["by_fraction"][str(f)]]
    if not points:
      continue
    x = [100 * f for f, _ in points]
    ax.plot(x, [e["mean"] for _, e in points], "o-", color=colour, label=init)
    ax.fill_between(x, [e["ci95"][0] for _, e in points], [e["ci95"][1] for _, e in points],
                    color=colour, alpha=0.2)
  ax.set_xlabel("labelled training cases (%)")
  ax.set_ylabel(summary["metric"])
  ax.set_xscale("log")
  ax.set_xticks([100 * f for f in fractions], [f"{100 * f:g}" for f in fractions])
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def segmentation_overlays(images, masks, predictions, path: str, title: str = "") -> str:
  """Images with the ground-truth (green) and predicted (red) foreground outlined."""
  n = len(images)
  fig, axes = plt.subplots(1, n, figsize=(2.0 * n, 2.3), squeeze=False)
  for i in range(n):
    ax = axes[0, i]
    ax.imshow(images[i], cmap="gray")
    for label, colour in ((masks[i], "lime"), (predictions[i], "red")):
      if np.any(label > 0):
        ax.contour(label > 0, levels=[0.5], colors=colour, linewidths=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
