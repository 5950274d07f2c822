"""Self-distillation pretraining: DINO with iBOT's masked-token loss (models/dino.py).

Each step makes two global views of every image (config.views, crops from
config.input.crop_scale) and config.dino.local_crops small local ones. The teacher, the
student's moving average kept in the train state (extra_state.ExtraState), embeds the global views;
the student embeds all of them, its global views with some mask units hidden behind the mask
token on config.dino.mask_prob of the images (iBOT). The loss is DINO's on the pooled outputs
plus iBOT's on the masked tokens; after the update the teacher and the two centres move
towards the student and the teacher's batch means. The collapse check warns when the teacher
gives every image the same output.

One of train/methods.py's methods: its settings (`defaults`, `variant`, `check`), model, loss
with the EMA teacher's state, collapse check and checkpoint figure.
"""
import jax
import jax.numpy as jnp
import numpy as np

from vismae_jax import config_lib
from vismae_jax.models import dino
from vismae_jax.train import contrastive, extra_state, masked_image

NAMES = {"dino": "DINO + iBOT"}
FIGURE = "views"
ROWS = ("view 1", "student's view 1", "view 2", "local view 1")
# The teacher's outputs vary less from image to image than this (mean KL from their mean):
# collapsed, whichever way.
COLLAPSED_KL = 1e-3


def defaults(c, method: str):
  """DINO's global crops (0.32 to 1 of the area) and views, iBOT's masking (32 px units, 30%).

  dino: a head (hidden, bottleneck, prototypes) shared by the pooled and the patch tokens,
  iBOT's 8192 prototypes; student and teacher temperatures; the teacher's EMA momentum, from
  `momentum` to 1 on a cosine over the run; the centres' momentum; local_crops extra views of
  local_size px from local_scale of the area (multi-crop: the student alone sees them);
  mask_prob of the student's global views masked (iBOT); the weight of the masked-token loss
  against the pooled one.
  """
  del method
  c.input.crop_scale = (0.32, 1.0)
  c.mae = dict(mask_ratio=0.3, mask_unit=32)
  c.views = contrastive.view_defaults()
  c.dino = dict(head_dims=(2048, 256, 8192), student_temp=0.1, teacher_temp=0.04,
                momentum=0.996, center_momentum=0.9, local_crops=6, local_size=96,
                local_scale=(0.05, 0.32), mask_prob=0.5, patch_weight=1.0)


def variant(c, name: str):
  """sample / tiny at 64 px: units of the last stage's 32 px would be 4 per image, so 16 px;
  two local crops of 32 px; a head as wide as the last stage; blur scaled from 224 px."""
  config_lib.swin_cpu_variant(c, name)
  c.views.blur_sigma = (0.1, 0.6)
  c.mae.mask_unit = 16
  c.dino.update(head_dims=(128, 32, 256), local_crops=2, local_size=32)
  c.optim.lr = 5e-4


def check(config, check):
  masked_image.check_mask(config, check)
  contrastive.check_views(config, check)
  d = config.dino
  reduction = config.model.patch_size * 2 ** (len(config.model.depths) - 1)
  contrastive.widths(d.head_dims, 3, "config.dino.head_dims", "(hidden, bottleneck, prototypes)",
                     check)
  for name in ("student_temp", "teacher_temp"):
    check(d[name] > 0, f"config.dino.{name}={d[name]}: must be > 0")
  for name in ("momentum", "center_momentum", "mask_prob"):
    check(0 <= d[name] <= 1, f"config.dino.{name}={d[name]}: must be in [0, 1]")
  check(d.local_crops >= 0, f"config.dino.local_crops={d.local_crops}: must be >= 0")
  check(d.local_size > 0 and d.local_size % reduction == 0,
        f"config.dino.local_size={d.local_size}: must be a positive multiple of patch_size * "
        f"2^(stages-1) = {reduction} px")
  low, high = d.local_scale
  check(0 < low <= high <= 1, f"config.dino.local_scale={tuple(d.local_scale)}: need "
        "0 < min <= max <= 1 (area fractions)")
  check(d.patch_weight >= 0, f"config.dino.patch_weight={d.patch_weight}: must be >= 0")


def build_model(config):
  return dino.SwinDINO(**config_lib.swin_kwargs(config), head_dims=tuple(config.dino.head_dims))


def inputs(config, images_u8, rng):
  """uint8 batch (B, H, W) -> global views (B, 2, S, S, C), the student's token masks of them
  (B, 2, S/p, S/p), and local views (B, local_crops, s, s, C) or None."""
  k_global, k_local, k_mask, k_which = jax.random.split(rng, 4)
  d = config.dino
  views = contrastive.views(config, images_u8, k_global)
  b = views.shape[0]
  tokens = config.input.image_size // config.model.patch_size
  hidden = masked_image.token_mask(config, k_mask, 2 * b).reshape(b, 2, tokens, tokens)
  hidden &= jax.random.bernoulli(k_which, d.mask_prob, (b, 2))[..., None, None]
  local = None
  if d.local_crops:
    local = contrastive.views(config, images_u8, k_local, d.local_crops, size=d.local_size,
                              crop_scale=d.local_scale)
  return views, hidden, local


def by_view(x, views: int):
  """(B * views, ...) in image-major order, as `contrastive.flat` made it, -> (views, B, ...)."""
  return jnp.moveaxis(x.reshape((-1, views) + x.shape[1:]), 1, 0)


def token_weights(hidden, grid: int):
  """(N, *t) token mask -> (N, *grid): the masked share of each coarser token (grid per axis),
  in 2D and 3D."""
  n, *tokens = hidden.shape
  f = tokens[0] // grid
  split = hidden.reshape(n, *[v for _ in tokens for v in (grid, f)]).astype(jnp.float32)
  return split.mean(tuple(range(2, 2 * len(tokens) + 1, 2)))


def make_loss_fn(model, config):
  d = config.dino

  def loss_fn(params, images_u8, rng, extra):
    input_rng, drop_rng, local_drop_rng = jax.random.split(rng, 3)
    views, hidden, local = inputs(config, images_u8, input_rng)
    flat = contrastive.flat
    t_pooled, t_tokens = jax.lax.stop_gradient(
        model.apply({"params": extra["teacher"]}, flat(views), deterministic=True))
    s_pooled, s_tokens = model.apply({"params": params}, flat(views), flat(hidden),
                                     deterministic=False, rngs={"dropout": drop_rng})
    students = [by_view(s_pooled, 2)]
    if local is not None:
      l_pooled, _ = model.apply({"params": params}, flat(local), deterministic=False,
                                rngs={"dropout": local_drop_rng})
      students.append(by_view(l_pooled, local.shape[1]))
    pooled_loss = dino.distillation_loss(by_view(t_pooled, 2), jnp.concatenate(students),
                                         extra["center"], d.teacher_temp, d.student_temp)
    weight = token_weights(flat(hidden), t_tokens.shape[1])
    token_loss = dino.masked_token_loss(
        by_view(t_tokens, 2), by_view(s_tokens, 2), by_view(weight, 2),
        extra["token_center"], d.teacher_temp, d.student_temp)
    teacher = dino.collapse_statistics(t_pooled, extra["center"], d.teacher_temp)
    aux = {"centers": teacher_means(t_pooled, t_tokens),
           # student_kl: the pooled loss less the teacher's entropy, the part the student can
           # lower (every teacher view enters as many pairs: the mean KL over the pairs).
           "metrics": {"pooled_loss": pooled_loss, "token_loss": token_loss,
                       "student_kl": pooled_loss - teacher["teacher_entropy"], **teacher}}
    return pooled_loss + d.patch_weight * token_loss, aux
  return loss_fn


def teacher_means(pooled, tokens) -> dict:
  """The teacher's batch means that the centres move towards (`update_extra`): of its pooled
  logits (N, K) and of its token logits (N, *grid, K), each (1, K)."""
  return {"center": pooled.mean(0, keepdims=True),
          "token_center": tokens.mean(tuple(range(tokens.ndim - 1)))[None]}


def init_extra(config, section: str = "dino"):
  """The step-0 extra state: the teacher (the student's initial parameters) and the pooled and
  token centres, of config.<section> (DINO's, or a method that distils the same way)."""
  prototypes = config[section].head_dims[-1]

  def init(params):
    zeros = jnp.zeros((1, prototypes), jnp.float32)
    return {"teacher": params, "center": zeros, "token_center": zeros}
  return init


def update_extra(config, section: str = "dino"):
  """After each update: the teacher towards the student (momentum on dino.teacher_momentum's
  cosine, per step), the centres towards the teacher's batch means (aux["centers"])."""
  d = config[section]

  def update(extra, params, aux, step, schedule):
    momentum = dino.teacher_momentum(step, schedule["total_steps"], d.momentum)
    centers = dino.ema({k: extra[k] for k in aux["centers"]}, aux["centers"], d.center_momentum)
    return {"teacher": dino.ema(extra["teacher"], params, momentum), **centers}
  return update


def collapse_check(config, section: str = "dino", who: str = "DINO"):
  """metrics -> a warning when the teacher's outputs no longer depend on the image."""
  log_k = float(np.log(config[section].head_dims[-1]))

  def check(metrics) -> str:
    kl, entropy = metrics["teacher_kl"], metrics["teacher_entropy"]
    if kl >= COLLAPSED_KL:
      return ""
    how = (f"a uniform output (lower config.{section}.teacher_temp)" if entropy > 0.5 * log_k
           else f"one prototype for every image (raise config.{section}.teacher_temp or lower "
           f"config.{section}.center_momentum)")
    return (f"{who}'s teacher has collapsed to {how}: its outputs differ from their mean by "
            f"KL {kl:.2g} (entropy {entropy:.3g} of at most {log_k:.3g})")
  return check


def task_fields(model, config) -> dict:
  return {"init_params": lambda rng: masked_image.init_params(model, config, rng),
          "loss_fn": make_loss_fn(model, config),
          "extra": extra_state.ExtraState(init_extra(config), update_extra(config),
                                   collapse_check(config))}


def figure_rows(model, config, params, images_u8, rng) -> dict:
  """The two global views, the first as the student sees it (hidden pixels NaN), and the first
  local view."""
  del model, params
  views, hidden, local = inputs(config, images_u8, rng)
  chans = config.model.in_chans
  pixels = masked_image.hidden_pixels(hidden[:, 0], config.model.patch_size, chans)
  rows = {"view 1": views[:, 0], "student's view 1": jnp.where(pixels, jnp.nan, views[:, 0]),
          "view 2": views[:, 1]}
  if local is not None:
    rows["local view 1"] = local[:, 0]
  return rows
