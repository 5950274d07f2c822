"""Config validation: every inconsistent value of a run's config, found before any work.

`validate` runs once, at the entry point (main.py), and raises one ConfigError listing every
problem, each naming the field and the fix. The shared geometry, data, schedule and device
checks live here; a pretraining method's own settings are checked by its module
(train/methods.py), a task kind's labels by tasks.py when the data is read.
"""
import os

import jax

from data_pipelines import records
from vismae_jax import config_lib, preprocess, tasks
from vismae_jax.models import swin, swin_unetr
from vismae_jax.train import methods


def validate(config, device_count: int, process_count: int) -> None:
  """Raises ConfigError listing every problem, each with the field and the fix."""
  if config.get("task") not in config_lib.TASKS:
    raise config_lib.ConfigError(f"config.task={config.get('task')!r}: expected one of "
                                 f"{config_lib.TASKS}")
  finetuning = "finetune" in config  # a fine-tuning config, whatever its task (export too)
  if finetuning and config.finetune.kind not in tasks.KINDS:
    raise config_lib.ConfigError(f"config.finetune.kind={config.finetune.kind!r}: expected one "
                                 f"of {tuple(tasks.KINDS)}")
  if config.task in config_lib.FINETUNE_TASKS and not finetuning:
    raise config_lib.ConfigError(f"config.task={config.task!r} needs a fine-tuning config "
                      "(configs/finetune_seg.py or configs/finetune_cls.py)")
  errors = []

  def check(ok, message):
    if not ok:
      errors.append(message)

  _check_model(config, check)
  if config.task in ("predict", "evaluate"):
    _check_apply(config, device_count, check)
  elif config.task != "export":  # exporting needs the model only
    (_check_finetune if finetuning else _check_pretrain)(config, check)
    _check_run(config, device_count, process_count, check)
  if errors:
    raise config_lib.ConfigError("invalid config:\n  " + "\n  ".join(errors))


def _check_model(config, check):
  """The model geometry every task shares: the ViT's (_check_vit) or the Swin's."""
  m = config.model
  check(config.dtype in config_lib.DTYPES,
        f"config.dtype={config.dtype!r}: expected one of {config_lib.DTYPES}")
  check(m.attention in config_lib.ATTENTIONS,
        f"config.model.attention={m.attention!r}: expected one of {config_lib.ATTENTIONS}")
  if m.attention == "cudnn":
    check(jax.default_backend() == "gpu" and config.dtype == "bfloat16",
          f"config.model.attention='cudnn' runs cuDNN's fused kernel, on a GPU in bfloat16 only "
          f"(here {jax.default_backend()}, config.dtype={config.dtype!r}); 'einsum' or 'xla' "
          "compute the same anywhere")
  if m.arch not in config_lib.ARCHS:
    check(False, f"config.model.arch={m.arch!r}: expected one of {config_lib.ARCHS}")
  elif m.arch == "vit":
    _check_vit(config, check)
  elif m.arch == "swinunetr":
    _check_swin_unetr(config, check)
  else:
    _check_swin(config, check)


def _check_vit(config, check):
  m = config.model
  dims = "input.roi" if config_lib.volumetric(config) else "input.image_size"
  if not config_lib.positive(config, ("model.in_chans", "model.patch_size", "model.embed_dim",
                            "model.depth", "model.num_heads", dims), check):
    return
  shape = config_lib.spatial_shape(config)
  check(m.embed_dim % m.num_heads == 0 and m.embed_dim % 2 == 0 and m.embed_dim >= 2 * len(shape),
        f"config.model.embed_dim={m.embed_dim}: must be even, at least {2 * len(shape)} (its "
        f"sine-cosine table) and a multiple of config.model.num_heads={m.num_heads}")
  check(all(s % m.patch_size == 0 for s in shape),
        f"config.{dims}={shape if config_lib.volumetric(config) else shape[0]} must be a "
        "multiple of "
        f"config.model.patch_size={m.patch_size} along every axis")
  if config.get("finetune", {}).get("kind") == tasks.Segmentation.name:  # UNETR's decoder
    k = m.patch_size.bit_length() - 1
    check(m.patch_size >= 4 and m.patch_size == 2 ** k and m.depth >= k,
          f"config.model.patch_size={m.patch_size}, depth={m.depth}: UNETR decodes from a patch "
          "of 2^k >= 4 (MONAI's 16) and taps k blocks (models/unetr.py)")


def _check_stages(m, check):
  """What every Swin's stages need: heads that divide each stage's width, a known remat
  policy."""
  for i, heads in enumerate(m.num_heads):
    check((m.embed_dim * 2 ** i) % heads == 0,
          f"config.model.num_heads[{i}]={heads} does not divide stage {i}'s width "
          f"{m.embed_dim * 2 ** i} (embed_dim * 2^{i})")
  check(m.remat_policy in config_lib.REMAT_POLICIES,
        f"config.model.remat_policy={m.remat_policy!r}: expected one of "
        f"{config_lib.REMAT_POLICIES}")


def _check_swin(config, check):
  """The Swin geometry: stages, heads, windows and the image size."""
  if config_lib.volumetric(config):
    check(False, "config.model.arch='swin' (the release's 2-D Swin) runs on images; volumes "
          "(config.input.roi) take 'swinunetr' (MONAI's Swin) or 'vit'")
    return
  m, size = config.model, config.input.image_size
  if not config_lib.positive(config, ("model.in_chans", "model.patch_size", "model.embed_dim",
                            "model.depths", "model.num_heads", "model.window",
                            "input.image_size"), check):
    return  # the checks below divide by these
  n_stages = len(m.depths)
  check(len(m.num_heads) == n_stages,
        f"config.model.num_heads has {len(m.num_heads)} entries for {n_stages} stages "
        "(config.model.depths): give one head count per stage")
  _check_stages(m, check)
  reduction = m.patch_size * 2 ** (n_stages - 1)
  check(size % reduction == 0,
        f"config.input.image_size={size} must be a multiple of patch_size * 2^(stages-1) = "
        f"{reduction}, so that every patch merging halves an even grid; try "
        f"{max(reduction, size // reduction * reduction)}")


def _check_swin_unetr(config, check):
  """MONAI's SwinUNETR geometry: four stages, MONAI's feature sizes, inputs that survive the
  patch and four mergings, a known merge order; segmentation only."""
  m = config.model
  dims = "input.roi" if config_lib.volumetric(config) else "input.image_size"
  check(config.get("finetune", {}).get("kind", "segmentation") == tasks.Segmentation.name,
        "config.model.arch='swinunetr' segments (SwinUNETR); classification takes "
        "config.model.arch 'swin' or 'vit'")
  if not config_lib.positive(config, ("model.in_chans", "model.patch_size", "model.embed_dim",
                                      "model.depths", "model.num_heads", "model.window", dims),
                             check):
    return
  check(len(m.depths) == swin_unetr.STAGES and len(m.num_heads) == swin_unetr.STAGES,
        f"config.model.depths={tuple(m.depths)}, num_heads={tuple(m.num_heads)}: SwinUNETR has "
        f"{swin_unetr.STAGES} stages, one depth and head count each")
  check(m.embed_dim % 12 == 0, f"config.model.embed_dim={m.embed_dim} (MONAI's feature_size) "
        "must be a multiple of 12, as MONAI's SwinUNETR requires (12, 24, 48)")
  _check_stages(m, check)
  check(m.merge_order in swin.MERGE_ORDERS,
        f"config.model.merge_order={m.merge_order!r}: expected one of {tuple(swin.MERGE_ORDERS)}")
  multiple = swin_unetr.input_multiple(m.patch_size)
  shape = config_lib.spatial_shape(config)
  check(all(s % multiple == 0 for s in shape),
        f"config.{dims}={shape if config_lib.volumetric(config) else shape[0]} must be a "
        f"multiple of {multiple} along every axis (config.model.patch_size={m.patch_size}, then "
        "four 2x patch mergings)")


def _check_pretrain(config, check):
  if config.method not in methods.REGISTRY:
    check(False, f"config.method={config.method!r}: expected one of {tuple(methods.REGISTRY)}")
    return
  arch = methods.arch(config.method)
  check(config.model.arch == arch,
        f"config.method={config.method!r} with config.model.arch={config.model.arch!r}: "
        f"{config.method} pretrains config.model.arch={arch!r} (vit_mae the ViT, smit MONAI's "
        "Swin, every other method the release's Swin)")
  _check_pretrain_data(config, check)
  if not config_lib.volumetric(config):
    check(config.input.normalization in preprocess.NORMALIZATIONS,
          f"config.input.normalization={config.input.normalization!r}: expected one of "
          f"{preprocess.NORMALIZATIONS}")
  if config.model.arch == arch:
    methods.get(config.method).check(config, check)


def _check_pretrain_data(config, check):
  d = config.data
  check(d.source in config_lib.DATA_SOURCES, f"config.data.source={d.source!r}: expected one of "
        f"{config_lib.DATA_SOURCES}")
  check((d.source == "volumes") == config_lib.volumetric(config),
        f"config.data.source={d.source!r}: volumes (3-D records) go with a config.input.roi, "
        "2-D shards or the sample with config.input.image_size")
  check(d.source == "sample" or d.path,
        "config.data.path is empty: pass --config.data.path=<directory of ArrayRecord shards "
        "written by data_pipelines>, or use the bundled sample with configs/generic.py:sample")
  for modality in d.get("modalities", ()):
    check(modality in records.MODALITIES,
          f"config.data.modalities: unknown modality {modality!r}; expected {records.MODALITIES}")
  for modality, weight in d.get("mixture", {}).items():
    check(weight >= 0, f"config.data.mixture.{modality}={weight}: weights must be >= 0")
    check(weight == 0 or not d.modalities or modality in d.modalities,
          f"config.data.mixture.{modality}={weight} but config.data.modalities="
          f"{tuple(d.modalities)} excludes it: drop the weight or the filter")


def _check_finetune(config, check):
  f, p = config.finetune, config.protocol
  check(f.num_classes >= tasks.of(config).min_classes,
        f"config.finetune.num_classes={f.num_classes}: segmentation counts the background "
        "class too (>= 2)")
  check(not f.pretrained or os.path.exists(f.pretrained),
        f"config.finetune.pretrained={f.pretrained!r} does not exist: give a pretraining workdir, "
        "one of its checkpoint step directories, or a .pth / .safetensors file")
  check(bool(config.data.csv) and os.path.exists(config.data.csv),
        f"config.data.csv={config.data.csv!r} does not exist: pass a CSV with image,mask or "
        "image,label columns (see data_pipelines/downstream.py)")
  check(p.kind in ("kfold", "fixed"), f"config.protocol.kind={p.kind!r}: expected kfold or fixed")
  check(p.folds >= 2, f"config.protocol.folds={p.folds}: need at least 2")
  check(0 < p.val_fraction < 1, f"config.protocol.val_fraction={p.val_fraction}: must be in (0, 1)")
  check(all(0 < x <= 1 for x in p.fractions) and len(p.fractions) > 0,
        f"config.protocol.fractions={tuple(p.fractions)}: label fractions must be in (0, 1]")
  check(p.repeats >= 1, f"config.protocol.repeats={p.repeats}: need at least 1 run per fold")
  check(all(isinstance(n, int) and n > 0 for n in p.shots) and len(set(p.shots)) == len(p.shots),
        f"config.protocol.shots={tuple(p.shots)}: numbers of labelled training cases must be "
        "positive integers, each once")
  check(isinstance(p.shot_draws, int) and p.shot_draws >= 1,
        f"config.protocol.shot_draws={p.shot_draws}: need at least 1 draw per fold and shots")
  check(0 <= f.probe_first < 1 and not (f.probe_first and f.freeze_encoder),
        f"config.finetune.probe_first={f.probe_first}: must be in [0, 1), and 0 with "
        "freeze_encoder (a frozen encoder is held for the whole run)")
  check(0 < config.optim.layer_decay <= 1,
        f"config.optim.layer_decay={config.optim.layer_decay}: must be in (0, 1] (1: off)")
  check(not p.compare_random or f.pretrained,
        "config.protocol.compare_random needs config.finetune.pretrained to compare against")


def _check_apply(config, device_count, check):
  """Prediction and evaluation: a model, inputs, a place for the outputs, batches that split."""
  p = config.predict
  check(not config_lib.volumetric(config),
        f"config.task={config.task!r} reads 2-D images; volumes are fine-tuned and scored by the "
        "protocol (task=finetune), which predicts whole volumes by sliding windows")
  if config.task == "evaluate":
    check(p.input.endswith(".csv") and os.path.isfile(p.input),
          f"config.predict.input={p.input!r}: task=evaluate needs a labelled CSV (image,mask or "
          "image,label columns)")
  else:
    check(bool(p.input) and os.path.exists(p.input),
          f"config.predict.input={p.input!r} does not exist: give a folder of images (PNG, JPEG, "
          "DICOM) or a CSV with an image column")
  check(bool(p.output), "config.predict.output is empty: name a folder for the outputs")
  check(not config.finetune.pretrained or os.path.exists(config.finetune.pretrained),
        f"config.finetune.pretrained={config.finetune.pretrained!r} does not exist")
  _check_eval_batch(config, device_count, check)


def _check_eval_batch(config, device_count, check):
  if config_lib.positive(config, ("eval_batch_size",), check):
    check(config.eval_batch_size % device_count == 0,
          f"config.eval_batch_size={config.eval_batch_size} must be a multiple of the device "
          f"count {device_count}")


def _check_run(config, device_count, process_count, check):
  if not config_lib.positive(
      config, ("batch_size", "log_every", "checkpoint_every", "keep_checkpoints"), check):
    return
  check(config.batch_size % process_count == 0,
        f"config.batch_size={config.batch_size} is the global batch and must split evenly over "
        f"{process_count} processes")
  rounded = max(device_count, config.batch_size // device_count * device_count)
  check(config.batch_size % device_count == 0,
        f"config.batch_size={config.batch_size} must be a multiple of the device count "
        f"{device_count}; try {rounded}")
  mesh = config.mesh
  sizes = [mesh.data, mesh.fsdp]
  if -1 in sizes:
    fixed = abs(int(mesh.data * mesh.fsdp))
    check(sizes.count(-1) == 1 and device_count % fixed == 0,
          f"config.mesh data={mesh.data} fsdp={mesh.fsdp}: at most one axis may be -1 and the "
          f"others must divide the {device_count} devices")
  else:
    check(mesh.data * mesh.fsdp == device_count,
          f"config.mesh data={mesh.data} x fsdp={mesh.fsdp} must equal the {device_count} devices")
  check(config.total_steps >= 0 and config.num_epochs >= 0,
        f"config.total_steps={config.total_steps}, config.num_epochs={config.num_epochs}: "
        "neither may be negative")
  check(config.total_steps > 0 or config.num_epochs > 0,
        "set config.num_epochs or config.total_steps to a positive number")
  check(config.get("min_steps", 0) >= 0, f"config.min_steps={config.get('min_steps')}: must be "
        ">= 0")
  if "eval_batch_size" in config:  # fine-tuning validates and tests in batches of it
    _check_eval_batch(config, device_count, check)
  check(mesh.fsdp_min_mb >= 0, f"config.mesh.fsdp_min_mb={mesh.fsdp_min_mb}: must be >= 0")
