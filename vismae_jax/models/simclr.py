"""SwinSimCLR: SimCLR pretraining of the Swin encoder that SwinMAE pretrains.

SimCLR (Chen et al., 2020) embeds two augmented views of every image (augment.contrastive_view)
and trains the embeddings of the two views of one image to be closer to each other than to
those of every other image in the batch (`nt_xent`). Here the encoder sees the whole image (no
mask token), its last stage is normalised and averaged over positions, and a 2-layer MLP
projects the result; the loss is computed on the projection, and fine-tuning keeps what is
before it (the paper's finding: the representation before the head transfers better).

The encoder's names are SwinMAE's (`patch_embed`, `encoder/layers_*`) and `norm` is the
classifier's, so a checkpoint transfers by name; only `projection` has no place downstream.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from vismae_jax.models import swin

HEAD = "projection"


class Projection(nn.Module):
  """The paper's projection head: Linear, ReLU, Linear. Without its BatchNorm, whose batch
  statistics over devices would be a second cross-device dependency for little gain."""
  hidden: int
  out: int
  dtype: swin.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.relu(swin.dense(self.hidden, "hidden", self.dtype)(x))
    return swin.dense(self.out, "out", self.dtype)(x)


class SwinSimCLR(swin.SwinBackbone):
  """Swin encoder + LayerNorm + global average pool + projection head."""
  projection_dims: tuple = (2048, 128)  # (hidden, output) widths of the projection head

  @nn.compact
  def __call__(self, images, deterministic: bool = True):
    """images (B, H, W, in_chans) -> (B, projection_dims[1]) float32 embeddings."""
    x, _ = self.encode(images, deterministic)
    x = swin.layer_norm("norm", self.dtype)(x).mean(axis=(1, 2))
    hidden, out = self.projection_dims
    return Projection(hidden, out, self.dtype, name=HEAD)(x).astype(jnp.float32)


def nt_xent(z1, z2, temperature: float):
  """SimCLR's NT-Xent loss of two (N, D) embedding batches, z1[i] and z2[i] from one image.

  Each of the 2N embeddings is an anchor whose positive is its other view and whose 2N - 2
  negatives are all other embeddings; the loss is the cross-entropy of picking the positive
  from cosine similarities / temperature, averaged over the 2N anchors.

  Called inside a jitted step on the global (N, D) arrays, sharded over the mesh's batch axis:
  the (2N, 2N) similarity matrix needs every device's embeddings, so XLA all-gathers them, and
  every anchor has the whole global batch as negatives, as in the paper's cross-replica
  version, without an explicit collective here.
  """
  z = jnp.concatenate([z1, z2]).astype(jnp.float32)
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  n = z1.shape[0]
  logits = z @ z.T / temperature
  logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)  # an anchor is not its own
  positive = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(log_p, positive[:, None], axis=-1).mean()
