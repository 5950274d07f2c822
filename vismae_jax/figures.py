"""Pictures of results: what people look at first."""
import numpy as np

from vismae_jax import preprocess


def pyplot():
  """matplotlib's pyplot on its file-only backend, imported at the first figure: at the top it
  was half a second of every command's start, --help and --only_check_args included."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _save(fig, path: str, dpi: int = 100):
  """Every figure's ending: laid out, written, and closed so that long runs hold no figures."""
  plt = pyplot()
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  plt.close(fig)


def to_display(images: np.ndarray, normalization: str) -> np.ndarray:
  """Model-input units -> [0, 1] for display; masked (NaN) pixels become mid-grey."""
  if normalization == "release":
    images = images * preprocess.RELEASE_STD + preprocess.RELEASE_MEAN
  images = np.clip(np.nan_to_num(images, nan=0.5), 0.0, 1.0)
  return images[..., 0] if images.shape[-1] == 1 else images


def image_grid(rows: dict[str, np.ndarray], path: str, title: str = "") -> str:
  """One row per entry of `rows` (name -> (N, H, W[, 3]) in [0, 1]), one column per image."""
  plt = pyplot()
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
  _save(fig, path)
  return path


def label_efficiency_curve(summary: dict, path: str) -> str:
  """Metric against label fraction, one line per initialisation, with its 95% CI band."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(5, 3.6))
  fractions = summary["fractions"]
  for init, colour in (("pretrained", "tab:blue"), ("random", "tab:orange")):
    points = [(f, summary["by_fraction"][str(f)][init]) for f in fractions
              if init in summary["by_fraction"][str(f)]
              and np.isfinite(summary["by_fraction"][str(f)][init]["mean"])]
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
  _save(fig, path, dpi=120)
  return path


def _overlay_panel(ax, image, mask, label_map, text: str):
  """One overlay panel: a greyscale image, the ground truth's outline (lime) and a prediction's
  (red) where given and non-empty, titled."""
  ax.imshow(image, cmap="gray")
  for outline, colour in ((mask, "lime"), (label_map, "red")):
    if outline is not None and np.any(outline > 0):
      ax.contour(outline > 0, levels=[0.5], colors=colour, linewidths=1.0)
  ax.set_title(text, fontsize=8)
  ax.set_xticks([])
  ax.set_yticks([])


def _overlay_grid(rows, path: str, title: str) -> str:
  """A figure of `_overlay_panel`s: rows of (image, mask, label map, title) panels."""
  plt = pyplot()
  fig, axes = plt.subplots(len(rows), len(rows[0]), figsize=(2.2 * len(rows[0]), 2.3 * len(rows)),
                           squeeze=False)
  for r, panels in enumerate(rows):
    for c, panel in enumerate(panels):
      _overlay_panel(axes[r, c], *panel)
  if title:
    fig.suptitle(title, fontsize=9)
  _save(fig, path)
  return path


def _row_panels(predictions: dict, row: int, row_label: str):
  """A case's columns: (None, the case's label) for the ground truth, then (label map, title)
  for each model, the title with its Dice where known."""
  return [(None, row_label)] + [
      (label_map, name if dice is None else f"{name}: Dice {dice:.2f}")
      for name, (label_map, dice) in ((n, predictions[n][row]) for n in predictions)]


def segmentation_overlays(images, masks, predictions: dict, row_labels, path: str,
                          title: str = "") -> str:
  """One row per case: the image with its ground truth (green; `masks` None: none known),
  then each model's prediction (red) over it, titled with its Dice where known.
  `predictions`: {model name: [(label map, Dice or None) per case]}."""
  masks = [None] * len(images) if masks is None else masks
  rows = [[(image, mask, label_map, text)
           for label_map, text in _row_panels(predictions, row, row_labels[row])]
          for row, (image, mask) in enumerate(zip(images, masks))]
  return _overlay_grid(rows, path, title)


VIEWS = ("axial", "coronal", "sagittal")


def orthogonal_slices(volume, centre) -> list:
  """The axial, coronal and sagittal slices through `centre` of an RAS (X, Y, Z) volume, each
  as an image with the anterior (axial) or superior side up: axial = fixed Z (rows Y), coronal
  = fixed Y and sagittal = fixed X (rows Z), the patient's right and anterior to the right."""
  x, y, z = centre
  return [np.asarray(s).T[::-1] for s in (volume[:, :, z], volume[:, y, :], volume[x, :, :])]


def volume_overlays(images, masks, predictions: dict, row_labels, path: str,
                    title: str = "") -> str:
  """`segmentation_overlays` for volumes: per case, the ground truth and each model shown in
  three orthogonal slices (`orthogonal_slices`) through the ground truth's foreground centroid,
  or the volume's centre where there is no mask or no foreground.

  images: (X, Y, Z) RAS volumes; masks: label maps of the same shapes, or None;
  `predictions`: {model name: [(label map, Dice or None) per case]}, the Dice the volume's.
  """
  from scipy import ndimage
  masks = [None] * len(images) if masks is None else masks
  rows = []
  for row, (image, mask) in enumerate(zip(images, masks)):
    centre = (np.array(image.shape) - 1) // 2
    if mask is not None and np.any(mask > 0):
      centre = np.round(ndimage.center_of_mass(mask > 0)).astype(int)
    views = lambda v: [None] * 3 if v is None else orthogonal_slices(v, centre)
    rows.append([panel + (f"{text}\n{view}",)
                 for label_map, text in _row_panels(predictions, row, row_labels[row])
                 for panel, view in zip(zip(views(image), views(mask), views(label_map)),
                                        VIEWS)])
  return _overlay_grid(rows, path, title)


def heatmap(values: np.ndarray, row_labels, column_labels, path: str, title: str = "",
            label: str = "") -> str:
  """A table of values in [0, 1] as colours, each cell also written out (the number is what a
  reader compares; the colour is where the eye goes first)."""
  plt = pyplot()
  values = np.asarray(values, float)
  fig, ax = plt.subplots(figsize=(1.1 * values.shape[1] + 2.2, 0.6 * values.shape[0] + 1.4))
  image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
  for (r, c), value in np.ndenumerate(values):
    ax.text(c, r, f"{value:.2f}", ha="center", va="center",
            color="black" if value > 0.6 else "white", fontsize=9)
  ax.set_xticks(range(values.shape[1]), column_labels, rotation=30, ha="right")
  ax.set_yticks(range(values.shape[0]), row_labels)
  fig.colorbar(image, ax=ax, label=label)
  if title:
    ax.set_title(title, fontsize=9)
  _save(fig, path)
  return path


def method_curves(curves: dict, metric: str, path: str, title: str = "") -> str:
  """Methods side by side: {method: [(setting, mean, ci_low, ci_high)]}, the settings label
  fractions ("10%") or few-shot counts ("10 shots"). Fractions make a curve on a log axis with
  CI bands; few-shot settings, if any, points with CI bars in a panel of their own. A method
  may lack some settings (runs not made): it is drawn where it has them."""
  plt = pyplot()
  settings = list(dict.fromkeys(s for points in curves.values() for s, *_ in points))
  fractions = sorted((s for s in settings if s.endswith("%")), key=lambda s: float(s[:-1]))
  shots = [s for s in settings if not s.endswith("%")]
  panels = 1 + bool(shots)
  fig, axes = plt.subplots(1, panels, figsize=(5 + 2.5 * (panels - 1), 3.8), squeeze=False,
                           gridspec_kw={"width_ratios": [2, 1][:panels]})
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, (method, points) in enumerate(curves.items()):
    colour = colours[i % len(colours)]
    by_setting = {s: rest for s, *rest in points}
    mine = [s for s in fractions if s in by_setting]
    x = [float(s[:-1]) for s in mine]
    mean, low, high = (np.array([by_setting[s][k] for s in mine]) for k in range(3))
    axes[0, 0].plot(x, mean, "o-", color=colour, label=method)
    axes[0, 0].fill_between(x, low, high, color=colour, alpha=0.15)
    for j, s in enumerate(shots):
      if s not in by_setting:
        continue
      m, lo, hi = by_setting[s]
      offset = (i - (len(curves) - 1) / 2) * 0.08
      axes[0, 1].errorbar(j + offset, m, yerr=[[m - lo], [hi - m]], fmt="o", color=colour)
  ax = axes[0, 0]
  ax.set_xscale("log")
  ax.minorticks_off()  # the log axis' own labels between the fractions' would crowd them
  ax.set_xticks([float(s[:-1]) for s in fractions], fractions)
  ax.set_xlabel("labelled training cases")
  ax.set_ylabel(metric)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  if shots:
    axes[0, 1].set_xticks(range(len(shots)), shots)
    axes[0, 1].set_xlim(-0.5, len(shots) - 0.5)
    axes[0, 1].grid(alpha=0.3)
  if title:
    fig.suptitle(title, fontsize=10)
  _save(fig, path, dpi=120)
  return path
