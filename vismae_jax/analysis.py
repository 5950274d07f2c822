"""Feature reuse: how much of each encoder stage fine-tuning kept, by linear CKA.

Linear centred kernel alignment (Kornblith et al., 2019) compares two representations of the
same images up to an orthogonal transform and a scale, so it can say whether a stage computes
the same features after fine-tuning as before it, although no single unit need keep its
meaning. A stage near 1 was reused as it was; a low value means fine-tuning rewrote it. From
pretrained weights, high values in the early stages are the usual sign that pretraining
transferred; from a random init they show how far fine-tuning moved that stage. The release's
Swin and SwinUNETR's (MONAI's) are compared alike, on images and on volumes.
"""
import functools

import jax
import numpy as np

from data_pipelines import volume_crops
from vismae_jax import config_lib
from vismae_jax.train import finetune


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
  """Linear CKA of features x (n, d1) and y (n, d2) of the same n examples, in [0, 1].

  ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) of the column-centred matrices, in float64: the
  squared norms of the Gram-like products of float32 activations lose the digits that
  separate values near 1. Features that are constant over the examples have nothing to align
  and give 0.
  """
  x, y = (np.asarray(a, np.float64).reshape(len(a), -1) for a in (x, y))
  if len(x) != len(y):
    raise ValueError(f"linear_cka: {len(x)} and {len(y)} rows; both need the same examples")
  x, y = x - x.mean(axis=0), y - y.mean(axis=0)
  cross = np.linalg.norm(y.T @ x) ** 2
  norms = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
  return float(cross / norms) if norms > 0 else 0.0


def stage_names(depths) -> list[str]:
  """The compared representations: the patch embedding, then every stage's output, named as
  their parameters are."""
  return ["patch_embed", *(f"layers_{i}" for i in range(len(depths)))]


def _encoder_output(module, method_name) -> bool:
  return module.path == ("encoder",) and method_name == "__call__"


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, images):
  """The encoder's (features, skips) in the model's forward pass; the head's output is dropped
  here, so that the compiler leaves out the decoder."""
  _, state = model.apply({"params": params}, images, True, capture_intermediates=_encoder_output,
                         mutable=["intermediates"])
  return state["intermediates"]["encoder"]["__call__"][0]


def stage_features(model, params, images) -> dict[str, np.ndarray]:
  """{stage name: (n, channels)}: each stage's output for model-input `images`, mean-pooled
  over the image's tokens.

  Why mean-pooled: the pooled vector per image is what a linear probe or the classifier head
  reads, and with tens of images it keeps CKA's n x d products small and its estimate about
  images, not about the thousands of correlated tokens of one image. The outputs are captured
  from the model's own forward pass (its `encode`, whatever head follows), so the Swin-UNet
  and the classifier are measured alike.
  """
  features, skips = _forward(model, params, images)
  # skips[i] is stage i's input: the patch embedding, then the outputs of all but the last.
  outputs = [*skips, features]
  return {name: np.asarray(out, np.float32).mean(axis=tuple(range(1, out.ndim - 1)))
          for name, out in zip(stage_names(model.depths), outputs)}


def feature_reuse(config, initial_params, finetuned_params, images) -> dict:
  """{stage name: linear CKA} between the encoder at the start of fine-tuning and after it, on
  the same uint8 `images` (n, H, W), prepared as validation prepares them, or volumes (a list
  of float (X, Y, Z)), of which the central config.input.roi crop is compared."""
  model = finetune.build_model(config)
  if config_lib.volumetric(config):
    images = np.stack([volume_crops.central_crop(v, tuple(config.input.roi)) for v in images])
  x, _ = finetune.model_inputs(config, {"image": images}, None, train=False)
  before, after = (stage_features(model, p, x) for p in (initial_params, finetuned_params))
  return {name: linear_cka(before[name], after[name]) for name in before}
