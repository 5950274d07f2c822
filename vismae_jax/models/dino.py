"""SwinDINO: DINO self-distillation with iBOT's masked-token objective on the Swin encoder.

DINO (Caron et al., 2021) trains a student to match a teacher, the exponential moving average
of the student, on different views of one image: both map a view to a softmax over K
prototypes, the teacher's centred (a running mean of its outputs subtracted) and sharpened (a
lower temperature), which together keep it from collapsing to one prototype or to a uniform
output. iBOT (Zhou et al., 2022) adds masked image modelling: the student sees its global views
with some tokens behind the mask token and matches, at those tokens, the teacher's outputs for
the unmasked view. On a Swin encoder, which has no class token, the pooled last stage stands for
the class token and the last stage's tokens are the patch tokens (iBOT's Swin variant).

The encoder's names are SwinMAE's (`patch_embed`, `mask_token`, `encoder/layers_*`, and
`norm`, the classifier's), so a checkpoint transfers by name; only `dino_head` has no place
downstream. `distillation_loss`, `masked_token_loss` and `ema` are the objective's pieces;
train/distillation.py puts them together.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from vismae_jax.models import swin

HEAD = "dino_head"


class DINOHead(nn.Module):
  """DINO's head: a 3-layer MLP to a bottleneck, L2-normalised, then cosine similarity with
  `prototypes` L2-normalised prototype vectors (DINO's weight-normalised last layer with its
  norm fixed at 1, which the paper found steadies training)."""
  hidden: int
  bottleneck: int
  prototypes: int
  dtype: swin.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = swin.gelu(swin.dense(self.hidden, "fc1", self.dtype)(x))
    x = swin.gelu(swin.dense(self.hidden, "fc2", self.dtype)(x))
    x = swin.dense(self.bottleneck, "fc3", self.dtype)(x).astype(jnp.float32)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
    w = self.param("prototypes", nn.initializers.truncated_normal(0.02),
                   (self.bottleneck, self.prototypes))
    return x @ (w / jnp.maximum(jnp.linalg.norm(w, axis=0, keepdims=True), 1e-6))


class SwinDINO(swin.SwinBackbone):
  """Swin encoder (masked tokens behind the mask token) + LayerNorm + DINO head, applied to the
  pooled last stage and to each of its tokens."""
  head_dims: tuple = (2048, 256, 8192)  # (hidden, bottleneck, prototypes)

  @nn.compact
  def __call__(self, images, token_mask=None, deterministic: bool = True):
    """images (B, H, W, in_chans), token_mask (B, H/p, W/p) or None -> float32 logits over the
    prototypes (before any temperature): pooled (B, K) and per last-stage token (B, h, w, K)."""
    x, _ = self.encode(images, deterministic, token_mask)
    x = swin.layer_norm("norm", self.dtype)(x)
    head = DINOHead(*self.head_dims, dtype=self.dtype, name=HEAD)
    return head(x.mean(axis=(1, 2))), head(x)


def cross_entropy(teacher_logits, student_logits, center, teacher_temp: float,
                  student_temp: float):
  """-sum_k p_teacher log p_student over the last axis: the teacher centred and sharpened, its
  gradient stopped."""
  target = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits - center) / teacher_temp, axis=-1)
  return -(target * jax.nn.log_softmax(student_logits / student_temp, axis=-1)).sum(-1)


def distillation_loss(teacher, student, center, teacher_temp: float, student_temp: float):
  """DINO's loss: teacher (G, B, K) pooled logits of the G global views, student (V, B, K) of
  all V views, the globals first. Every student view learns from every teacher view but its own
  (a view predicting itself teaches nothing); the mean over those pairs and the batch."""
  terms = [cross_entropy(teacher[t], student[s], center, teacher_temp, student_temp).mean()
           for t in range(teacher.shape[0]) for s in range(student.shape[0]) if s != t]
  return sum(terms) / len(terms)


def masked_token_loss(teacher, student, weight, center, teacher_temp: float,
                      student_temp: float):
  """iBOT's loss: teacher and student (G, B, h, w, K) token logits of the same global views,
  the student's masked; the cross-entropy at each token weighted by `weight` (G, B, h, w), the
  share of the token's area that was masked, averaged per view over its weights."""
  ce = cross_entropy(teacher, student, center, teacher_temp, student_temp)
  axes = tuple(range(1, ce.ndim))
  per_view = (ce * weight).sum(axes) / jnp.maximum(weight.sum(axes), 1e-6)
  return per_view.mean()


def ema(old, new, momentum):
  """momentum * old + (1 - momentum) * new, leaf by leaf: the teacher and the centres."""
  return jax.tree.map(lambda o, n: momentum * o + (1 - momentum) * n, old, new)


def teacher_momentum(step, total_steps, base: float):
  """DINO's schedule: from `base` to 1 on a half cosine over the run."""
  progress = jnp.clip(step / jnp.maximum(total_steps, 1), 0.0, 1.0)
  return 1 - (1 - base) * (jnp.cos(jnp.pi * progress) + 1) / 2


def teacher_temperature(step, warmup_steps, start: float, end: float):
  """DINO's teacher-temperature warm-up: linear from `start` to `end` over warmup_steps, then
  `end`. A teacher that starts sharp on random features locks onto a few prototypes; starting
  softer lets the outputs spread first."""
  progress = jnp.clip(step / jnp.maximum(warmup_steps, 1), 0.0, 1.0)
  return start + (end - start) * progress


def collapse_statistics(teacher_logits, center, teacher_temp: float) -> dict:
  """How far the teacher is from collapse, from its (N, K) pooled logits: the mean entropy of
  its outputs (near 0: one prototype wins whatever the image; near log K: uniform) and the mean
  KL divergence of each output from their average (near 0: every image gives the same output,
  which either collapse does).

  The entropy is also what DINO's loss cannot go below: the cross-entropy is it plus the KL
  divergence of the student from the teacher, so the loss rises while the teacher's outputs
  flatten early on, and the learning shows in the loss minus the entropy."""
  p = jax.nn.softmax((teacher_logits - center) / teacher_temp, axis=-1)
  log_p = jnp.log(jnp.maximum(p, 1e-12))
  mean = p.mean(0, keepdims=True)
  return {"teacher_entropy": -(p * log_p).sum(-1).mean(),
          "teacher_kl": (p * (log_p - jnp.log(jnp.maximum(mean, 1e-12)))).sum(-1).mean()}
