"""The pretraining methods, registered once: each name -> the one module that holds the method.

A method module (docs/adding_a_method.md) has:
- NAMES: {config.method: the name figures and logs use};
- defaults(c, method, **options): its settings on top of config_lib.pretrain_base;
- variant(c, name): what the `sample` / `tiny` variants (and `cpu` for volumes) change;
- check(config, check): its settings' consistency, each problem one message for `check`;
- build_model(config), task_fields(model, config): the model and the loop.Task's init_params,
  loss_fn and, for self-distillation, extra state;
- FIGURE, ROWS, figure_rows(model, config, params, batch, rng): its checkpoint figure, and
  optionally figure_note(config), what the figure's title adds.

Modules: masked_image (SwinMAE, SimMIM), contrastive (SimCLR), distillation (DINO + iBOT),
vit_masked (ViT-MAE on images and volumes), smit (SMIT on volumes). A module whose model is not
the release's Swin says which encoder family it pretrains (`ARCH`, one of config_lib.ARCHS).
"""
from vismae_jax import config_lib
from vismae_jax.train import contrastive, distillation, masked_image, smit, vit_masked

MODULES = (masked_image, contrastive, distillation, vit_masked, smit)
REGISTRY = {name: module for module in MODULES for name in module.NAMES}
VARIANTS = {vit_masked: ("sample", "cpu", "tiny"), smit: ("cpu", "tiny")}  # others: sample, tiny


def get(method: str):
  """The module of `method`; a ConfigError naming the known ones otherwise."""
  if method not in REGISTRY:
    raise config_lib.ConfigError(f"config.method={method!r}: expected one of "
                                 f"{tuple(REGISTRY)}")
  return REGISTRY[method]


def arch(method: str) -> str:
  """The encoder family (config.model.arch) that `method` pretrains."""
  return getattr(get(method), "ARCH", "swin")


def display_name(method: str) -> str:
  return get(method).NAMES[method]


def pretrain_config(method: str = "mae", modalities=(), variant: str = "", **options):
  """A locked pretraining config of `method` (values may change, keys may not): the shared base,
  the method's settings (`options` go to its `defaults`, e.g. ndim=3 for ViT-MAE on volumes),
  then the config-file argument's variants."""
  module = get(method)
  c = config_lib.pretrain_base()
  c.method = method
  c.data.modalities = tuple(modalities)
  module.defaults(c, method, **options)
  for name in config_lib.variant_names(variant, VARIANTS.get(module, ("sample", "tiny"))):
    module.variant(c, name)
  return c.lock()
