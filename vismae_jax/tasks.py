"""Task kinds: what segmentation and classification each mean for training, scoring and reports.

Fine-tuning, prediction, evaluation and the report ask the config's kind (`of(config)`) instead
of testing `config.finetune.kind`, so a new kind (per-volume regression, say) is one class here
and one entry in KINDS. A kind holds its loss, the metric that picks the best checkpoint, how a
run is scored on its test cases and how two initialisations are compared case by case; the
models it fine-tunes are chosen by encoder family (`model_class`).

Segmentation Dice is the mean over test cases that contain the foreground (MONAI's ignore_empty:
a normal image has nothing to find); HD95, precision and recall (segmentation) and PR AUC
(classification) are reported beside the main metric.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vismae_jax import augment, config_lib, metrics
from vismae_jax.models import swin_unetr, unet, unetr, vit


def nanmean(values) -> float:
  values = np.asarray(values, float)
  return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def soft_dice_loss(logits, masks, num_classes: int, eps: float = 1e-5):
  """1 - mean soft Dice over foreground classes, pooled over the batch's pixels or voxels."""
  probs = jax.nn.softmax(logits, axis=-1)[..., 1:]
  onehot = jax.nn.one_hot(masks, num_classes)[..., 1:]
  axes = tuple(range(logits.ndim - 1))
  inter = jnp.sum(probs * onehot, axis=axes)
  total = jnp.sum(probs, axis=axes) + jnp.sum(onehot, axis=axes)
  return 1.0 - jnp.mean((2 * inter + eps) / (total + eps))


def segmentation_loss(logits, masks, num_classes: int):
  """The release's 0.4 cross-entropy + 0.6 soft Dice over the foreground classes."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, masks).mean()
  return 0.4 * ce + 0.6 * soft_dice_loss(logits, masks, num_classes)


def classification_loss(logits, labels):
  """Softmax cross-entropy, or binary cross-entropy per label for multi-label flags."""
  if labels.ndim == 2:
    return optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype)).mean()
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def label_maps(probabilities: np.ndarray) -> np.ndarray:
  """Per-pixel classes (B, H, W) of segmentation probabilities (B, H, W, classes)."""
  return probabilities.argmax(axis=-1).astype(np.uint8)


class Segmentation:
  """A label map per image or volume: Swin-UNet, UNETR or SwinUNETR, Dice + cross-entropy, Dice
  per case."""
  name = "segmentation"
  metric = "dice"  # the report's main metric
  best_metric = "val_dice"  # the validation metric that keeps a run's best checkpoint
  secondary = ("hd95", "precision", "recall")  # beside it; the first also in the CSV / Markdown
  min_classes = 2  # the background counts
  example_keys = ("image", "mask")  # what a training example holds
  saves_predictions = True  # a run keeps its test label maps (for the overlays)

  @staticmethod
  def model_class(arch: str):
    return {"swin": unet.SwinUNet, "vit": unetr.UNETR, "swinunetr": swin_unetr.SwinUNETR}[arch]

  @staticmethod
  def head_kwargs(config) -> dict:
    return {"feature_size": config.model.feature_size} if config.model.arch == "vit" else {}

  @staticmethod
  def augment(config, rng, x, masks):
    """Training augmentation of 2-D images and their masks (the release's flips and turns)."""
    del config
    return augment.segmentation_augment(rng, x, masks)

  @staticmethod
  def loss(config, logits, batch, masks):
    del batch
    return segmentation_loss(logits, masks, config.finetune.num_classes)

  @staticmethod
  def probabilities(config, logits):
    del config
    return jax.nn.softmax(logits, axis=-1)

  @staticmethod
  def unflip(probabilities, axes):
    """Test-time augmentation: a flipped image's prediction, flipped back."""
    return jnp.flip(probabilities, axes)

  @staticmethod
  def decide(probabilities):
    """What is scored and written: label maps (an array of images, or a list of volumes)."""
    if isinstance(probabilities, list):
      return [label_maps(p) for p in probabilities]
    return label_maps(probabilities)

  @staticmethod
  def validation_score(config, decided, examples) -> float:
    dice = metrics.segmentation_scores(list(decided), list(examples["mask"]),
                                       config.finetune.num_classes, hd95=False)["dice"]
    return float(np.nanmean(dice))

  @staticmethod
  def score(config, decided, examples: dict, indices, distance_scale) -> dict:
    """Metrics of one run on its test cases and the per-case Dice the statistics pool;
    `distance_scale` (per case) turns a prediction's pixel into the distance unit, or is the
    voxel spacing of volumes."""
    if config_lib.volumetric(config):  # volumes of their own shapes, distances in mm
      s = metrics.segmentation_scores(list(decided), list(examples["mask"][indices]),
                                      config.finetune.num_classes,
                                      spacing=[tuple(d) for d in distance_scale])
    else:
      s = metrics.segmentation_scores(decided, examples["mask"][indices],
                                      config.finetune.num_classes)
      s["hd95"] = s["hd95"] * np.asarray(distance_scale)[:, None]
    dice = s["dice"][~np.all(np.isnan(s["dice"]), axis=1)]  # cases with something to find
    per_case = np.nanmean(dice, axis=1)
    return {"metric": float(per_case.mean()), "per_case": per_case.tolist(),
            "class_dice": np.nanmean(s["dice"], axis=0).tolist(),
            **{k: nanmean(s[k]) for k in Segmentation.secondary}}

  @staticmethod
  def pooled_ci(runs: list[dict]):
    """The pooled per-case bootstrap CI of the Dice over the runs' test cases."""
    return metrics.bootstrap_ci(np.mean, np.concatenate([r["per_case"] for r in runs]))

  @staticmethod
  def case_test(pretrained: list[dict], random: list[dict]) -> dict:
    """Pretrained against random on the same test cases (in the same order): Wilcoxon's
    signed-rank test on per-case Dice."""
    pooled = [np.concatenate([r["per_case"] for r in runs]) for runs in (pretrained, random)]
    return {"wilcoxon": metrics.case_test(*pooled)}

  @staticmethod
  def check_labels(config, table, path: str):
    """Labels of a segmentation CSV only stratify the splits: anything goes."""
    del config, table, path

  @staticmethod
  def subset_label(shots: int) -> str:
    return f"{shots} shots"

  shots_note = "N shots: N training images"
  per_class_shots = False  # few-shot subsets count images, not cases of each class

  @staticmethod
  def units(distance_unit: str) -> dict:
    return {"hd95": distance_unit}


class Classification:
  """A label (or 0/1 flags) per image: Swin or ViT classifier, cross-entropy, ROC AUC."""
  name = "classification"
  metric = "roc_auc"
  best_metric = "val_auc"
  secondary = ("pr_auc",)
  min_classes = 1
  example_keys = ("image", "label")
  saves_predictions = False

  @staticmethod
  def model_class(arch: str):
    return {"swin": unet.SwinClassifier, "vit": vit.ViTClassifier}[arch]

  @staticmethod
  def head_kwargs(config) -> dict:
    del config
    return {}

  @staticmethod
  def augment(config, rng, x, masks):
    return (augment.random_hflip(rng, x) if config.input.hflip else x), masks

  @staticmethod
  def loss(config, logits, batch, masks):
    del config, masks
    return classification_loss(logits, batch["label"])

  @staticmethod
  def probabilities(config, logits):
    if config.finetune.multilabel:
      return jax.nn.sigmoid(logits)
    return jax.nn.softmax(logits, axis=-1)

  @staticmethod
  def unflip(probabilities, axes):
    del axes
    return probabilities

  @staticmethod
  def decide(probabilities):
    """What is scored and written: the probabilities themselves."""
    return probabilities

  @staticmethod
  def validation_score(config, decided, examples) -> float:
    del config
    try:
      return float(metrics.classification_scores(examples["label"], decided)["roc_auc"])
    except ValueError:  # a validation split with one class only
      return float("nan")

  @staticmethod
  def score(config, decided, examples: dict, indices, distance_scale) -> dict:
    del config, distance_scale
    labels = examples["label"][indices]
    s = metrics.classification_scores(labels, decided)
    return {"metric": float(s["roc_auc"]), "pr_auc": float(s["pr_auc"]),
            "probs": np.asarray(decided).tolist(), "labels": labels.tolist()}

  @staticmethod
  def pooled_ci(runs: list[dict]):
    """The AUC over all the runs' test predictions, bootstrapped over cases (stratified by
    class where labels are single classes)."""
    labels = np.concatenate([r["labels"] for r in runs])
    probs = np.concatenate([r["probs"] for r in runs])
    return metrics.bootstrap_ci(lambda l, p: metrics.classification_scores(l, p)["roc_auc"],
                                labels, probs, strata=labels if labels.ndim == 1 else None)

  @staticmethod
  def case_test(pretrained: list[dict], random: list[dict]) -> dict:
    """DeLong's test of the two AUCs on the same cases, for binary labels (none otherwise)."""
    first = pretrained[0]
    if np.asarray(first["labels"]).ndim != 1 or np.asarray(first["probs"]).shape[1] != 2:
      return {}
    labels = np.concatenate([r["labels"] for r in pretrained])
    return {"delong": metrics.delong_test(
        labels, *(np.concatenate([np.asarray(r["probs"])[:, 1] for r in runs])
                  for runs in (pretrained, random)))}

  @staticmethod
  def check_labels(config, table, path: str):
    """Class indices that the classifier can learn and be scored on."""
    if table.labels is None or config.finetune.multilabel:
      return
    found = np.unique(table.labels)
    if len(found) < 2 and config.task == "finetune":
      raise config_lib.ConfigError(f"{path}: every row has label {found[0]}: a classifier needs "
                                   "at least two classes to learn and to be scored")
    if found.min() < 0 or found.max() >= config.finetune.num_classes:
      raise config_lib.ConfigError(
          f"{path}: labels run from {found.min()} to {found.max()}, but "
          f"config.finetune.num_classes={config.finetune.num_classes}: set it to "
          f"{found.max() + 1}")

  @staticmethod
  def subset_label(shots: int) -> str:
    return f"{shots} per class"

  shots_note = "N per class: N training cases of every class"
  per_class_shots = True

  @staticmethod
  def units(distance_unit: str) -> dict:
    del distance_unit
    return {}


KINDS = {kind.name: kind for kind in (Segmentation, Classification)}


def of(config):
  """The kind of a fine-tuning config (config.finetune.kind)."""
  return KINDS[config.finetune.kind]
