"""Masked-image pretraining: SwinMAE (MSE) or SimMIM (L1) on window-masked images, the loss on
the masked pixels. Both models return pixel patches of the same layout, so their masking, loss
and reconstruction figure are shared; `config.method` chooses the model and the loss.

One of train/methods.py's methods: its settings (`defaults`, `variant`, `check`), model, loss
and checkpoint figure.
"""
import jax
import jax.numpy as jnp

from vismae_jax import augment, config_lib, preprocess
from vismae_jax.models import mae, simmim

NAMES = {"mae": "SwinMAE", "simmim": "SimMIM"}
MODELS = {"mae": mae.SwinMAE, "simmim": simmim.SwinSimMIM}
LOSSES = {"mae": mae.masked_mse, "simmim": mae.masked_l1}
FIGURE = "reconstructions"
# reconstruct's rows, top to bottom (jit hands dicts back with their keys sorted).
ROWS = ("original", "masked", "encoder input", "reconstruction")


MASKINGS = ("random", "uniform")


def defaults(c, method: str):
  """The masking: the release's (16 px units, 75% masked) or SimMIM's (32 px units, 60%).

  masking: "random", the release's (the encoder computes every token, masked ones too);
  "uniform", sparse, SwinMAE only: one unit of every 2x2 block kept, the encoder runs on those
  alone (a quarter of the tokens), secondary_ratio of them hidden behind the mask token again
  (models/mae.py; benchmarks/results/README.md measures both).
  """
  c.mae = dict(mask_ratio=0.75, mask_unit=16, norm_pix_loss=False, masking="random",
               secondary_ratio=0.25)
  if method == "simmim":
    c.mae.update(mask_unit=32, mask_ratio=0.6)


def variant(c, name: str):
  """sample / tiny (config_lib.swin_cpu_variant) at 64 px: SwinMAE's mask units of 8 px (16 px
  would leave 4 visible squares of a 64 px image where the paper's 224 px leave 49, and
  pretrained so the label-efficiency protocol fine-tuned worse: benchmarks/results/README.md);
  SimMIM's of 16 px, 6 of 16 visible, near the share of SimMIM's 224 px (19 of 49)."""
  config_lib.swin_cpu_variant(c, name)
  c.mae.mask_unit = 8 if c.method == "mae" else 16
  c.optim.lr = 2e-3


def check_mask(config, check):
  """Mask units of whole tokens that tile the image, and a ratio that hides some of them."""
  m, mae_c, size = config.model, config.mae, config.input.image_size
  check(mae_c.mask_unit % m.patch_size == 0,
        f"config.mae.mask_unit={mae_c.mask_unit} px must be a multiple of config.model."
        f"patch_size={m.patch_size} (a mask unit covers whole tokens)")
  check(size % mae_c.mask_unit == 0,
        f"config.input.image_size={size} must be a multiple of config.mae.mask_unit="
        f"{mae_c.mask_unit}")
  check(0.0 < mae_c.mask_ratio < 1.0,
        f"config.mae.mask_ratio={mae_c.mask_ratio}: must be in (0, 1)")


def check_crop_scale(config, check):
  low, high = config.input.crop_scale
  check(0 < low <= high <= 1, f"config.input.crop_scale={tuple(config.input.crop_scale)}: "
        "need 0 < min <= max <= 1 (area fractions)")


def check(config, check):
  m, mae_c, size = config.model, config.mae, config.input.image_size
  n_stages = len(m.depths)
  check(config.method != "mae" or len(m.decoder_depths) == n_stages - 1,
        f"config.model.decoder_depths needs {n_stages - 1} entries (one per encoder stage but "
        f"the last), got {len(m.decoder_depths)}")
  check_mask(config, check)
  check(mae_c.masking in MASKINGS,
        f"config.mae.masking={mae_c.masking!r}: expected one of {MASKINGS}")
  check(mae_c.masking != "uniform" or config.method == "mae",
        f"config.mae.masking='uniform' is SwinMAE's sparse mode; config.method="
        f"{config.method!r} needs masking='random'")
  if mae_c.masking == "uniform":
    check(mae_c.mask_ratio == 0.75,
          f"config.mae.mask_ratio={mae_c.mask_ratio}: uniform masking keeps one unit in four, "
          "so 0.75; hide more with config.mae.secondary_ratio")
    check(size % (2 * mae_c.mask_unit) == 0,
          f"config.input.image_size={size}: uniform masking needs an even number of mask units "
          f"per side (a multiple of 2 * config.mae.mask_unit = {2 * mae_c.mask_unit})")
    check(0.0 <= mae_c.secondary_ratio < 1.0,
          f"config.mae.secondary_ratio={mae_c.secondary_ratio}: must be in [0, 1)")
  check_crop_scale(config, check)


def build_model(config, model_class=None):
  """config.method's model, or model_class (a SwinMAE variant) on the same settings."""
  head = ({"decoder_depths": tuple(config.model.decoder_depths)} if config.method == "mae"
          else {})
  return (model_class or MODELS[config.method])(**config_lib.swin_kwargs(config), **head)


def grid(config):
  """(tokens per side, mask units per side, tokens per unit)."""
  size, patch, unit = config.input.image_size, config.model.patch_size, config.mae.mask_unit
  return size // patch, size // unit, unit // patch


def init_params(model, config, rng):
  tokens, _, _ = grid(config)
  size, chans = config.input.image_size, config.model.in_chans
  return model.init(rng, jnp.zeros((1, size, size, chans)),
                    jnp.zeros((1, tokens, tokens), bool))["params"]


def token_mask(config, rng, batch: int):
  """config.mae's window masking at token level: (B, tokens, tokens), True where hidden."""
  _, units, per_unit = grid(config)
  return mae.unit_mask_to_tokens(mae.window_mask(rng, batch, units, config.mae.mask_ratio),
                                 per_unit)


def model_inputs(config, images_u8, rng, train: bool):
  """uint8 batch -> (normalised images, token mask, kept units or None).

  The token mask is True where the encoder sees nothing (what the loss scores); kept units, in
  the sparse "uniform" masking only, are the units the encoder's compacted image is made of.
  """
  flip_rng, mask_rng, crop_rng = jax.random.split(rng, 3)
  x = preprocess.to_model_input(images_u8, image_size=config.input.image_size,
                                channels=config.model.in_chans,
                                normalization=config.input.normalization)
  if train and tuple(config.input.crop_scale) != (1.0, 1.0):
    x = augment.random_resized_crop(crop_rng, x, scale=tuple(config.input.crop_scale))
  if train and config.input.hflip:
    x = augment.random_hflip(flip_rng, x)
  if config.mae.masking == "uniform":
    _, units, per_unit = grid(config)
    kept, hidden = mae.uniform_mask(mask_rng, x.shape[0], units, config.mae.secondary_ratio)
    return x, mae.unit_mask_to_tokens(hidden, per_unit), kept
  return x, token_mask(config, mask_rng, x.shape[0]), None


def make_loss_fn(model, config):
  def loss_fn(params, images_u8, rng):
    input_rng, drop_rng = jax.random.split(rng)
    x, hidden, kept = model_inputs(config, images_u8, input_rng, train=True)
    pred = model.apply({"params": params}, x, hidden, deterministic=False, kept_units=kept,
                       rngs={"dropout": drop_rng})
    return LOSSES[config.method](pred, x, hidden, config.model.patch_size,
                                 config.mae.norm_pix_loss)
  return loss_fn


def task_fields(model, config) -> dict:
  return {"init_params": lambda rng: init_params(model, config, rng),
          "loss_fn": make_loss_fn(model, config)}


def figure_rows(model, config, params, images_u8, rng) -> dict:
  """Picture rows in input units: original, masked (hidden pixels NaN), what the encoder saw
  (sparse masking only: the compacted image, shown at twice its size) and reconstruction.

  Visible patches are shown as they were; masked ones as predicted. With norm_pix_loss the
  prediction is mapped back with each target patch's own mean and variance.
  """
  patch, chans = config.model.patch_size, config.model.in_chans
  x, hidden, kept = model_inputs(config, images_u8, rng, train=False)
  pred = model.apply({"params": params}, x, hidden, deterministic=True, kept_units=kept)
  if config.mae.norm_pix_loss:
    target = mae.patchify(x, patch)
    pred = pred * jnp.sqrt(target.var(-1, keepdims=True, ddof=1) + 1e-6) + target.mean(
        -1, keepdims=True)
  pixel_mask = hidden_pixels(hidden, patch, chans)
  masked = jnp.where(pixel_mask, jnp.nan, x)
  rows = {"original": x, "masked": masked}
  if kept is not None:
    seen = jnp.where(mae.compact(pixel_mask, kept), jnp.nan, mae.compact(x, kept))
    rows["encoder input"] = seen.repeat(2, axis=1).repeat(2, axis=2)
  rows["reconstruction"] = jnp.where(pixel_mask, mae.unpatchify(pred, patch, chans), x)
  return rows


def figure_note(config) -> str:
  """What the figure's title adds: which masking drew it (dense and sparse look alike)."""
  return f" ({config.mae.masking} masking)"


def hidden_pixels(hidden, patch: int, chans: int):
  """A (B, *tokens) token mask as a (B, *spatial, C) pixel mask, in 2D and 3D."""
  values = patch ** (hidden.ndim - 1) * chans
  return mae.unpatchify(jnp.broadcast_to(hidden[..., None], hidden.shape + (values,)), patch,
                        chans)
