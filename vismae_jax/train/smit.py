"""SMIT pretraining: masked image prediction with self-distillation on MONAI's 3D Swin
(models/smit.py), the encoder that SwinUNETR fine-tunes.

Each step makes two views of every crop (independent flips, quarter turns and intensity
jitter: augment.volume_augment) and hides config.mae.mask_ratio of the mask units of each from
the student. The teacher, the student's moving average kept in the train state
(extra_state.ExtraState), sees both views whole. The loss is
  pixel_weight * L1 on the masked voxels (SimMIM's, mae.masked_l1)
  + image_weight * DINO's loss on the pooled last stage, each view against the other
  + patch_weight * iBOT's loss on the masked tokens of hidden state h_k,
where k is the level whose tokens are one mask unit each (config.mae.mask_unit = patch * 2^k),
so every distilled token is wholly masked or wholly seen. The teacher temperature warms up from
warmup_teacher_temp to teacher_temp over the first teacher_temp_warmup of the run (its value
rides in the extra state, advanced per step like the teacher's momentum); the centres, the
momentum schedule and the collapse check are DINO's (train/distillation.py).

One of train/methods.py's methods: its settings (`defaults`, `variant`, `check`), model, loss
with the EMA teacher's state, collapse check and checkpoint figure. What fine-tuning takes is
the teacher's encoder (`config.smit.hand_on`: or the student's), by name into SwinUNETR.
"""
import jax
import jax.numpy as jnp

from vismae_jax import augment, config_lib
from vismae_jax.models import dino, mae, smit, swin_unetr
from vismae_jax.train import contrastive, distillation, extra_state, masked_image, vit_masked

NAMES = {"smit": "SMIT"}
ARCH = "swinunetr"  # MONAI's Swin (models/swin_unetr.py), not the release's
FIGURE = "reconstructions"
ROWS = ("original", "masked", "reconstruction")
HAND_ON = ("teacher", "student")


def defaults(c, method: str):
  """SMIT's recipe on MONAI's SwinUNETR encoder (swin_unetr_model: patches of 2, feature size
  48, windows of 7) and crops of 96^3 (MONAI's SwinUNETR recipe).

  mae: mask units of 16 voxels a side (one token of h3 with patches of 2), 70% hidden.
  smit: DINO's head (hidden, bottleneck, prototypes: iBOT's 8192), student and teacher
  temperatures, the teacher's from warmup_teacher_temp over the first teacher_temp_warmup of
  the run (iBOT: 30 of 100 epochs); the teacher's EMA momentum, from `momentum` to 1 on a cosine
  per step; the centres' momentum; the loss weights of the paper (reconstruction 1,
  distillation 0.1 each); hand_on, whose encoder fine-tuning and the export take.
  AdamW at DINO's lr 5e-4 per 256 crops.
  """
  del method
  c.model = config_lib.swin_unetr_model()
  c.input = dict(roi=(96, 96, 96), intensity=0.1)
  c.data = dict(source="volumes", path="", workers=0)
  c.mae = dict(mask_ratio=0.7, mask_unit=16)
  c.smit = dict(head_dims=(2048, 256, 8192), student_temp=0.1, teacher_temp=0.07,
                warmup_teacher_temp=0.04, teacher_temp_warmup=0.3, momentum=0.996,
                center_momentum=0.9, pixel_weight=1.0, image_weight=0.1, patch_weight=0.1,
                hand_on="teacher")
  c.optim.update(lr=5e-4, lr_batch_base=256)
  c.batch_size = 64
  c.figure_images = 4


def variant(c, name: str):
  """cpu: the hippocampus on 2 cores, with configs/swin_unetr3d.py:cpu's encoder (feature size
  12, windows of 4) on its crops of 32^3; mask units of 8 voxels (64 a crop, one token of h2
  each: units of 16 would leave 8); a head of (192, 48, 512); 8 crops a step. tiny: the same
  on a 20-step schedule, for tests."""
  c.model.update(embed_dim=12, window=4)
  c.input.roi = (32, 32, 32)
  c.mae.mask_unit = 8
  c.smit.head_dims = (192, 48, 512)
  c.optim.update(lr=1e-3, lr_batch_base=0, warmup_epochs=5.0)
  c.batch_size, c.num_epochs, c.log_every, c.checkpoint_every = 8, 100.0, 50, 500
  if name == "tiny":
    c.total_steps, c.checkpoint_every, c.log_every = 20, 10, 5
    c.optim.warmup_epochs = 0.2


def token_level(config) -> int:
  """k of the distilled hidden state h_k: the one whose tokens are one mask unit each."""
  return (config.mae.mask_unit // config.model.patch_size).bit_length() - 1


def check(config, check):
  m, s, unit = config.model, config.smit, config.mae.mask_unit
  k = token_level(config)
  check(unit == m.patch_size * 2 ** k and 1 <= k <= swin_unetr.STAGES,
        f"config.mae.mask_unit={unit}: must be config.model.patch_size={m.patch_size} times 2, "
        f"4, ... {2 ** swin_unetr.STAGES} (a mask unit is then one token of a deeper stage, "
        "where the masked tokens are distilled)")
  check(all(r % unit == 0 for r in config.input.roi),
        f"config.input.roi={tuple(config.input.roi)} must be a multiple of config.mae.mask_unit="
        f"{unit} along every axis")
  check(0.0 < config.mae.mask_ratio < 1.0,
        f"config.mae.mask_ratio={config.mae.mask_ratio}: must be in (0, 1)")
  contrastive.widths(s.head_dims, 3, "config.smit.head_dims", "(hidden, bottleneck, prototypes)",
                     check)
  for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
    check(s[name] > 0, f"config.smit.{name}={s[name]}: must be > 0")
  for name in ("momentum", "center_momentum", "teacher_temp_warmup"):
    check(0 <= s[name] <= 1, f"config.smit.{name}={s[name]}: must be in [0, 1]")
  weights = ("pixel_weight", "image_weight", "patch_weight")
  for name in weights:
    check(s[name] >= 0, f"config.smit.{name}={s[name]}: must be >= 0")
  check(any(s[name] > 0 for name in weights),
        "config.smit: pixel_weight, image_weight and patch_weight are all 0: nothing to learn")
  check(s.hand_on in HAND_ON, f"config.smit.hand_on={s.hand_on!r}: expected one of {HAND_ON}")


def build_model(config):
  return smit.SwinSMIT(**config_lib.swin_kwargs(config), head_dims=tuple(config.smit.head_dims),
                       token_level=token_level(config))


def token_shape(config) -> tuple[int, ...]:
  return tuple(r // config.model.patch_size for r in config.input.roi)


def init_params(model, config, rng):
  return model.init(rng, jnp.zeros((1, *config_lib.input_shape(config))),
                    jnp.zeros((1, *token_shape(config)), bool))["params"]


def token_masks(config, rng, count: int):
  """(count, *roi/p): config.mae's window masking of volumes, True where hidden."""
  units = [r // config.mae.mask_unit for r in config.input.roi]
  return mae.unit_mask_to_tokens(mae.window_mask(rng, count, units, config.mae.mask_ratio),
                                 config.mae.mask_unit // config.model.patch_size)


def inputs(config, crops, rng):
  """float crops (B, *roi) -> two views (B, 2, *roi, 1), each its own flips, quarter turns and
  intensity jitter of the crop, and the student's token masks of them (B, 2, *roi/p)."""
  k_views, k_mask = jax.random.split(rng)
  x = crops.astype(jnp.float32)[..., None]
  jitter = config.input.intensity
  views = jnp.stack([augment.volume_augment(k, x, scale=jitter, shift=jitter)[0]
                     for k in jax.random.split(k_views, 2)], axis=1)
  b = x.shape[0]
  return views, token_masks(config, k_mask, 2 * b).reshape(b, 2, *token_shape(config))


def make_loss_fn(model, config):
  s = config.smit
  by_view = distillation.by_view

  def loss_fn(params, crops, rng, extra):
    input_rng, drop_rng = jax.random.split(rng)
    views, hidden = inputs(config, crops, input_rng)
    flat = contrastive.flat
    t_pooled, t_tokens, _ = jax.lax.stop_gradient(
        model.apply({"params": extra["teacher"]}, flat(views), deterministic=True))
    s_pooled, s_tokens, pixels = model.apply({"params": params}, flat(views), flat(hidden),
                                             deterministic=False, rngs={"dropout": drop_rng})
    temp = extra["teacher_temp"]
    image_loss = dino.distillation_loss(by_view(t_pooled, 2), by_view(s_pooled, 2),
                                        extra["center"], temp, s.student_temp)
    weight = distillation.token_weights(flat(hidden), t_tokens.shape[1])
    patch_loss = dino.masked_token_loss(by_view(t_tokens, 2), by_view(s_tokens, 2),
                                        by_view(weight, 2), extra["token_center"], temp,
                                        s.student_temp)
    pixel_loss = mae.masked_l1(pixels, flat(views), flat(hidden), config.model.patch_size)
    teacher = dino.collapse_statistics(t_pooled, extra["center"], temp)
    aux = {"centers": distillation.teacher_means(t_pooled, t_tokens),
           # student_kl: the image loss less the teacher's entropy, the part the student can
           # lower (distillation.py says why).
           "metrics": {"pixel_loss": pixel_loss, "image_loss": image_loss,
                       "patch_loss": patch_loss, "teacher_temp": temp,
                       "student_kl": image_loss - teacher["teacher_entropy"], **teacher}}
    loss = (s.pixel_weight * pixel_loss + s.image_weight * image_loss
            + s.patch_weight * patch_loss)
    return loss, aux
  return loss_fn


def init_extra(config):
  """DINO's teacher and centres, and the teacher temperature of step 0."""
  base = distillation.init_extra(config, "smit")
  return lambda params: {**base(params),
                         "teacher_temp": jnp.float32(config.smit.warmup_teacher_temp)}


def update_extra(config):
  """DINO's update of the teacher and centres, and the next step's teacher temperature."""
  s, base = config.smit, distillation.update_extra(config, "smit")

  def update(extra, params, aux, step, schedule):
    warmup = s.teacher_temp_warmup * schedule["total_steps"]
    temp = dino.teacher_temperature(step + 1, warmup, s.warmup_teacher_temp, s.teacher_temp)
    return {**base(extra, params, aux, step, schedule), "teacher_temp": temp.astype(jnp.float32)}
  return update


def task_fields(model, config) -> dict:
  return {"init_params": lambda rng: init_params(model, config, rng),
          "loss_fn": make_loss_fn(model, config),
          "extra": extra_state.ExtraState(init_extra(config), update_extra(config),
                                          distillation.collapse_check(config, "smit", "SMIT"))}


def figure_rows(model, config, params, crops, rng) -> dict:
  """The middle axial slice of each crop: original, masked (hidden voxels NaN) and the student's
  reconstruction (visible voxels as they were, masked ones as predicted)."""
  x = crops.astype(jnp.float32)[..., None]
  hidden = token_masks(config, rng, x.shape[0])
  _, _, pixels = model.apply({"params": params}, x, hidden, deterministic=True)
  patch, chans = config.model.patch_size, config.model.in_chans
  voxels = masked_image.hidden_pixels(hidden, patch, chans)
  return vit_masked.axial_slices({
      "original": x, "masked": jnp.where(voxels, jnp.nan, x),
      "reconstruction": jnp.where(voxels, mae.unpatchify(pixels, patch, chans), x)})
