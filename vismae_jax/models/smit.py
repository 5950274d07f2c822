"""SwinSMIT: SMIT's self-distilled masked image transformer (Jiang et al., MICCAI 2022) on
MONAI's Swin, the encoder SwinUNETR fine-tunes.

SMIT pretrains a 3D Swin with three objectives at once, from a student that sees a view with
most mask units hidden behind the mask token and a teacher (the student's moving average) that
sees the same view whole:
- masked image prediction: the student's last stage predicts the voxels (SimMIM's linear layer
  and pixel shuffle, `simmim.predict_pixels`), scored by L1 on the masked voxels only;
- masked patch-token distillation (iBOT's): at the tokens of a deep stage that were masked, the
  student's outputs over the prototypes match the teacher's;
- image-token distillation (DINO's): the pooled last stage of one view matches the teacher's on
  the other view.
The heads are DINO's (`dino.DINOHead`, a weight-normalised last layer), one for the pooled
token (`image_head`) and one for the patch tokens (`patch_head`), as the two come from stages
of different widths here.

Hidden states are SwinUNETR's: the embedding and each stage's merged output, normalised without
parameters (MONAI's `proj_out`), so the features trained are the ones SwinUNETR's decoder reads,
and the encoder's names are `swin_unetr.MonaiSwin`'s (`patch_embed`, `encoder/layers_*`): a
checkpoint transfers into SwinUNETR by name and exports to MONAI (convert/monai.py).
"""
import flax.linen as nn

from vismae_jax.models import dino, simmim, swin, swin_unetr

IMAGE_HEAD, PATCH_HEAD, PIXEL_HEAD = "image_head", "patch_head", "pixel_head"


class SwinSMIT(swin_unetr.MonaiSwin):
  """MONAI's Swin + DINO heads on the pooled last stage and on hidden state `token_level`'s
  tokens + a pixel head on the last stage."""
  head_dims: tuple = (2048, 256, 8192)  # (hidden, bottleneck, prototypes)
  token_level: int = 3  # hidden state h_k (stride patch * 2^k) whose tokens are distilled

  @nn.compact
  def __call__(self, images, token_mask=None, deterministic: bool = True):
    """images (B, *spatial, C), token_mask (B, *spatial/p) True where hidden, or None ->
    float32 logits over the prototypes, pooled (B, K) and per token of h_k (B, *grid_k, K),
    and the predicted pixels (B, *spatial/p, p^d * C) (mae.patchify's layout)."""
    x, skips = self.encode(images, deterministic, token_mask)
    hidden = [swin_unetr.normalize(h) for h in skips + [x]]
    spatial = tuple(range(1, x.ndim - 1))
    head = lambda name: dino.DINOHead(*self.head_dims, dtype=self.dtype, name=name)
    pooled = head(IMAGE_HEAD)(hidden[-1].mean(spatial))
    tokens = head(PATCH_HEAD)(hidden[self.token_level])
    stride = swin_unetr.input_multiple(self.patch_size)
    pixels = simmim.predict_pixels(hidden[-1], stride, self.patch_size, self.in_chans,
                                   self.dtype, PIXEL_HEAD)
    return pooled, tokens, swin.name_axes(pixels)
