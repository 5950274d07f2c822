"""SwinSimMIM: SimMIM pretraining of the Swin encoder that SwinMAE pretrains.

SimMIM (Xie et al., 2022) replaces masked tokens by a learned mask token, runs the encoder on
the whole grid (as SwinMAE's "random" masking does), normalises the last stage and predicts the
pixels with one linear layer: each final-stage token, stride = patch_size * 2^(stages-1) pixels
on a side, predicts its stride x stride x in_chans pixels. The loss is the L1 error on the
masked pixels (`mae.masked_l1`).

The encoder's names are SwinMAE's (`patch_embed`, `mask_token`, `encoder/layers_*`), so a
checkpoint transfers into the Swin-UNet and the classifier by name; `norm`, the encoder's final
LayerNorm, also fills the classifier's `norm`. Only `simmim_head` has no place downstream.
"""
import flax.linen as nn
import jax.numpy as jnp

from vismae_jax.models import mae, swin

HEAD = "simmim_head"


class SwinSimMIM(swin.SwinBackbone):
  """Swin encoder on the masked token grid + LayerNorm + one linear layer predicting pixels."""

  @nn.compact
  def __call__(self, images, token_mask, deterministic: bool = True, kept_units=None):
    """SwinMAE's signature and output: images (B, H, W, in_chans), token_mask (B, H/p, W/p)
    True where the encoder sees nothing -> (B, H/p, W/p, p*p*C) pixel patches, so that the loss
    and the reconstruction figure treat both models alike. kept_units must be None: the
    sparse masking is SwinMAE's."""
    if kept_units is not None:
      raise ValueError("SwinSimMIM runs on the whole token grid (no sparse masking)")
    x, _ = self.encode(images, deterministic, token_mask)
    x = swin.layer_norm("norm", self.dtype)(x)
    stride = self.patch_size * 2 ** (len(self.depths) - 1)
    return swin.name_axes(predict_pixels(x, stride, self.patch_size, self.in_chans, self.dtype))


def predict_pixels(x, stride: int, patch: int, channels: int, dtype, name: str = HEAD):
  """SimMIM's head, in 2D and 3D: one linear layer maps each token of the last stage (`stride`
  pixels a side) to its stride^d x channels pixels, which are put in place (pixel shuffle) and
  cut into the encoder's patches: (B, *grid, F) -> float32 (B, *spatial/patch, patch^d *
  channels), the layout of `mae.masked_l1` and the reconstruction figures. Call it from a
  compact module: the layer is that module's `name`."""
  x = swin.dense(stride ** (x.ndim - 2) * channels, name, dtype)(x)
  pixels = mae.unpatchify(x.astype(jnp.float32), stride, channels)
  return mae.patchify(pixels, patch)
