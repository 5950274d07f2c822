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
