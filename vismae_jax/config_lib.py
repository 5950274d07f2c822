"""Run configs: the schema every config file builds on, and what all runs share.

Config files in configs/ are the recipes: each starts from a builder here (fine-tuning) or in
train/methods.py (pretraining: the base here plus the method's own settings) and a variant. The
defaults double as the schema: the configs are locked, so a key that they do not define is a
typo that fails where it is set (ml_collections names the closest key). config_checks.py
rejects every inconsistent value before any work; resume_guard.py decides what a workdir may
resume under.
"""
import jax.numpy as jnp
import ml_collections

from data_pipelines import records

TASKS = ("pretrain", "finetune", "predict", "evaluate", "export")
# What each task can run: pretraining and export from either kind of config, fine-tuning,
# prediction and evaluation from a fine-tuning config only.
FINETUNE_TASKS = ("finetune", "predict", "evaluate")
DTYPES = ("float32", "bfloat16")
# The encoder families: the Swin Transformer (VIS-MAE's), the plain ViT (SelfMedMAE's
# MAE, UNETR and classifier, models/vit.py and unetr.py, in 2D and 3D; method vit_mae only) and
# MONAI's Swin, the same encoder in MONAI's flavour under SwinUNETR (models/swin_unetr.py, in
# 2D and 3D; segmentation).
ARCHS = ("swin", "vit", "swinunetr")
ATTENTIONS = ("einsum", "xla", "cudnn")  # models/swin.py's attend()
# jax.checkpoint_policies for rematerialised blocks: save nothing, every matmul's output, or
# those of matmuls without batch dimensions (the Dense layers, not attention's).
REMAT_POLICIES = ("nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable")
# shards and sample: 2-D records (data_pipelines.ingest); volumes: 3-D records
# (data_pipelines.volume_ingest), for a config with input.roi.
DATA_SOURCES = ("shards", "sample", "volumes")
# The release's fine-tuning recipes per task kind (tasks.py), and their `cpu` variants': 64 px
# models for 2-core machines, schedules short enough that the 80 runs of the label-efficiency
# protocol fit an hour or so; classification there with layer-wise lr decay 0.65, which keeps
# more of the pretrained encoder (benchmarks/results/README.md, label efficiency).
FINETUNE_RECIPES = {
    "segmentation": dict(depths=(2, 2, 6, 2), batch_size=32, num_epochs=150.0,
                         warmup_epochs=40.0, cpu_epochs=30.0, cpu_layer_decay=1.0,
                         vit_head=dict(feature_size=16)),  # UNETR's convolutional decoder
    "classification": dict(depths=(2, 2, 2, 2), batch_size=48, num_epochs=50.0,
                           warmup_epochs=10.0, cpu_epochs=40.0, cpu_layer_decay=0.65,
                           vit_head={}),
}


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and the fix."""


def variant_names(variant: str | None, known: tuple[str, ...]) -> list[str]:
  """The comma-separated variants of a config-file argument (`configs/generic.py:sample`);
  an unknown one fails in one line that lists the known ones."""
  names = [name for name in (variant or "").split(",") if name]
  for name in names:
    if name not in known:
      raise ConfigError(f"unknown config variant {name!r}; known: {', '.join(known)}")
  return names


def pretrain_base() -> ml_collections.ConfigDict:
  """What every pretraining run sets: the release's Swin encoder (and SwinMAE decoder depths),
  input, data, AdamW and schedule. A method (train/methods.py) adds its own settings."""
  c = ml_collections.ConfigDict()
  c.task = "pretrain"
  c.seed = 0
  c.method = "mae"  # a name of train/methods.py's registry

  # How the model computes, never what (EXECUTION): remat recomputes blocks in the backward
  # pass, keeping what remat_policy (one of REMAT_POLICIES) saves; attention picks the window
  # attention's implementation (ATTENTIONS).
  c.model = dict(arch="swin", in_chans=3, patch_size=4, embed_dim=96, depths=(2, 2, 2, 2),
                 decoder_depths=(2, 2, 2), num_heads=(3, 6, 12, 24), window=7, drop_path=0.1,
                 remat=False, remat_policy="nothing_saveable", attention="einsum")
  # minmax: the per-image [0, 1] scaling that fine-tuning uses, so both stages see the same
  # inputs; "release" reproduces the published pretraining (mean 0.223, std 0.202).
  # crop_scale: random resized crop area range, on device ((1, 1): none, as the release;
  # (0.2, 1.0): MAE's).
  c.input = dict(image_size=224, normalization="minmax", hflip=True, crop_scale=(1.0, 1.0))
  # data.path: a directory written by data_pipelines (dataset.json, index.csv, shards); when
  # given it is what trains, whatever data.source says. source=sample: without a path, the
  # bundled sample (the :sample and :tiny variants).
  # data.modalities: keep only these (empty: all, the Generic model).
  # data.mixture: sampling weight per modality (all zero: natural proportions, each record once
  # per epoch), e.g. --config.data.mixture.PT=3 to see PET three times as often as its share.
  c.data = dict(source="shards", path="", modalities=(), workers=0,
                mixture={m: 0.0 for m in records.MODALITIES})

  c.batch_size = 5120  # global: the paper's 640 per GPU on 8 GPUs
  c.num_epochs = 800.0
  c.total_steps = 0  # > 0 overrides num_epochs
  # lr is for the global batch; with lr_batch_base > 0 it is scaled by batch_size / base.
  c.optim = dict(lr=1e-3, lr_batch_base=0, b1=0.9, b2=0.95, weight_decay=0.05,
                 decay_norms_biases=True, warmup_epochs=10.0, clip_norm=0.0)

  # Devices per mesh axis; -1 takes the rest. fsdp > 1 shards parameters and optimizer state,
  # except tensors under fsdp_min_mb (their gathers would cost more than they save).
  c.mesh = dict(data=-1, fsdp=1, fsdp_min_mb=1.0)
  c.dtype = "float32"  # compute dtype; parameters stay float32

  c.log_every = 50
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.figure_images = 8  # originals / masked / reconstructions in the PNG grid
  return c


def positive(config, names, check) -> bool:
  """Checks that every dotted setting in `names` (ints or tuples of ints) is positive; returns
  whether all are, since the geometry checks divide by them."""
  ok = True
  for name in names:
    value = config
    for part in name.split("."):
      value = value[part]
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not values or not all(isinstance(v, int) and v > 0 for v in values):
      check(False, f"config.{name}={value!r}: must be positive"
                   + (" integers" if isinstance(value, (tuple, list)) else ""))
      ok = False
  return ok


def swin_kwargs(config) -> dict:
  """The Swin encoder's settings of `config`, which every Swin model (pretraining or
  fine-tuning) takes; MONAI's Swin adds its merge order and SwinUNETR-v2's convolutions."""
  m = config.model
  kwargs = dict(in_chans=m.in_chans, patch_size=m.patch_size, embed_dim=m.embed_dim,
                depths=tuple(m.depths), num_heads=tuple(m.num_heads), window=m.window,
                drop_path=m.drop_path, remat=remat_policy(m), attention=m.attention,
                dtype=jnp.dtype(config.dtype))
  if m.arch == "swinunetr":
    kwargs.update(merge_order=m.merge_order, conv_blocks=m.use_v2)
  return kwargs


def swin_cpu_variant(c: ml_collections.ConfigDict, name: str):
  """The Swin pretraining variants' shared part (a method adds its own, train/methods.py).

  sample: the bundled real images and a 0.4M-parameter model at 64 px, 2000 steps: minutes on
          a 2-core CPU, and long enough to leave MAE's early predict-the-mean plateau, which a
          wider model at 128 px does not leave in that time.
  tiny:   the sample's model on a 20-step schedule, for tests.
  """
  c.data.source = "sample"
  c.model.update(in_chans=1, embed_dim=16, depths=(2, 1, 1, 1), decoder_depths=(1, 1, 1),
                 num_heads=(1, 1, 2, 2), window=4, drop_path=0.0)
  c.input.image_size = 64
  c.batch_size = 16
  c.num_epochs = 125.0
  c.optim.warmup_epochs = 5.0
  c.log_every = 100
  c.checkpoint_every = 500
  if name == "tiny":
    c.batch_size = 8
    c.total_steps = 20
    c.optim.warmup_epochs = 0.2
    c.log_every = 5
    c.checkpoint_every = 10
    c.figure_images = 4


def remat_policy(model_config):
  """The models' `remat`: the policy's name when blocks are rematerialised, else None."""
  return model_config.remat_policy if model_config.remat else None


def volumetric(config) -> bool:
  """Whether `config` runs on volumes (3-D crops of input.roi) rather than 2-D images."""
  return "roi" in config.input


def spatial_shape(config) -> tuple[int, ...]:
  """The spatial shape of one model input: the 3-D ROI, or the 2-D image's square."""
  return tuple(config.input.roi) if volumetric(config) else (config.input.image_size,) * 2


def input_shape(config) -> tuple[int, ...]:
  """One model input's shape: (*spatial, channels)."""
  return (*spatial_shape(config), config.model.in_chans)


def finetune_defaults(kind: str = "segmentation") -> ml_collections.ConfigDict:
  """VIS-MAE fine-tuning: the release's Swin-UNet / classifier recipe, run as a protocol."""
  recipe = FINETUNE_RECIPES[kind]
  c = ml_collections.ConfigDict()
  c.task = "finetune"
  c.seed = 0
  c.model = dict(arch="swin", in_chans=3, patch_size=4, embed_dim=96,
                 depths=recipe["depths"], num_heads=(3, 6, 12, 24),
                 window=7, drop_path=0.1, remat=False, remat_policy="nothing_saveable",
                 attention="einsum")
  # pretrained: a pretraining workdir (its newest checkpoint), one checkpoint step directory, or
  # a PyTorch checkpoint (.pth / .safetensors: the release's, ours exported, Microsoft Swin-T);
  # empty: random initialisation only. freeze_encoder: only what follows the encoder trains
  # (linear probing of the classifier; the Swin-UNet's decoder), the representation test of MAE.
  # probe_first: LP-FT, the patch embedding and encoder held for that share of the run's steps
  # (0 to 1, so that min_steps stretches it too) while what follows them trains, then everything
  # trains (layer_decay still applies).
  # multilabel: classification with 0/1 flags per label (sigmoid per label; the CSV's labels
  # look like 0|1|0).
  c.finetune = dict(kind=kind, num_classes=2, multilabel=False, pretrained="", encoder_only=False,
                    fill_deeper=False, freeze_encoder=False, probe_first=0.0)
  # task=predict: input, a folder of images (PNG, JPEG, DICOM) or a CSV with an image column;
  # output, where masks (at each input's own size) or predictions.csv and overlays go; tta, the
  # mean over flipped copies; probabilities, also each mask's class probabilities (.npy).
  # task=evaluate: input, a labelled CSV as fine-tuning reads it; output, its report.
  c.predict = dict(input="", output="", tta=False, probabilities=False)
  c.input = dict(image_size=224, hflip=True)
  # data.csv: image,mask or image,label columns (data_pipelines/downstream.py), and optionally:
  # group_column: cases sharing its value (a patient, a subject) never straddle a split;
  # fold_column: the folds of k-fold cross-validation, when the CSV has it ("": drawn folds);
  # pixel_size_column: mm per pixel of each original image: distances (HD95) in mm, else in
  # original-image pixels.
  c.data = dict(csv="", workers=0, group_column="patient_key", fold_column="fold",
                pixel_size_column="")
  # kind: kfold (from data.fold_column, else drawn by group) or fixed (72/8/20). Inside each
  # fold val_fraction of the training cases validate (best checkpoint); fractions are the
  # label fractions to train on; compare_random also fine-tunes from random initialisation;
  # repeats: runs per (fold, fraction, initialisation) with seeds seed, seed + 1, ... (new
  # layers, data order, augmentation; the splits stay), averaged within the fold.
  # shots: few-shot runs besides the fractions, on N training cases per class (classification;
  # multi-label: per first positive label) or N images in all (segmentation) for each N, nested
  # like the fractions; shot_draws: different draws of them per fold (seeds (seed, fold, draw)),
  # each its own run and averaged within the fold like repeats.
  c.protocol = dict(kind="kfold", folds=5, max_folds=0, val_fraction=0.1, fractions=(1.0,),
                    compare_random=False, repeats=1, shots=(), shot_draws=1)
  c.batch_size = recipe["batch_size"]
  c.eval_batch_size = 32
  c.num_epochs = recipe["num_epochs"]
  c.total_steps = 0
  # min_steps: every run trains at least this many steps, so that a small label fraction is
  # not stopped before it learns anything (epochs of a few dozen images are a few steps).
  c.min_steps = 0
  # layer_decay < 1: layer-wise learning-rate decay (e.g. 0.75; 1: off, as the release).
  c.optim = dict(lr=1e-3, lr_batch_base=0, b1=0.9, b2=0.999, weight_decay=0.05,
                 decay_norms_biases=True, warmup_epochs=recipe["warmup_epochs"], clip_norm=0.0,
                 layer_decay=1.0)
  c.mesh = dict(data=-1, fsdp=1, fsdp_min_mb=1.0)
  c.dtype = "float32"
  c.log_every = 50
  c.checkpoint_every = 200  # steps between checkpoints and validations
  c.keep_checkpoints = 1
  return c


def apply_finetune_variant(c: ml_collections.ConfigDict, variant: str):
  """`cpu`: 64 px models for 2-core machines (Swin-UNet 0.44M, classifier 0.31M parameters),
  the widths of the `sample` pretraining, on the kind's short schedule (FINETUNE_RECIPES; at
  least 400 steps, so that a small label fraction learns something). `tiny`: 40 steps, tests.
  """
  recipe = FINETUNE_RECIPES[c.finetune.kind]
  for name in variant_names(variant, ("cpu", "tiny")):
    c.model.update(in_chans=1, embed_dim=16, num_heads=(1, 1, 2, 2), window=4, drop_path=0.0)
    c.model.depths = (2, 1, 1, 1)
    c.input.image_size = 64
    c.batch_size = c.eval_batch_size = 16
    c.num_epochs = recipe["cpu_epochs"]
    c.min_steps = 400
    c.optim.update(lr=2e-3, warmup_epochs=3.0, layer_decay=recipe["cpu_layer_decay"])
    c.log_every, c.checkpoint_every = 50, 100
    if name == "tiny":
      c.total_steps, c.checkpoint_every, c.log_every = 40, 20, 10
      c.batch_size = c.eval_batch_size = 8
      c.optim.warmup_epochs = 0.1
  return c


def finetune(kind: str, variant: str = "") -> ml_collections.ConfigDict:
  """A locked fine-tuning config of `kind`: values may change, keys may not."""
  return apply_finetune_variant(finetune_defaults(kind), variant or "").lock()


def vit_model() -> dict:
  """SelfMedMAE's encoder: ViT-B/16 on one channel, no class token (UNETR's ViT has none; the
  classifier pools the patch tokens)."""
  return dict(arch="vit", in_chans=1, patch_size=16, embed_dim=768, depth=12, num_heads=12,
              mlp_ratio=4.0, drop_path=0.1, attention="einsum")


def vit_cpu_model(c: ml_collections.ConfigDict):
  """The ViT of the `sample`, `cpu` and `tiny` variants: 4 blocks of width 96 (0.5M
  parameters) on patches of 8."""
  c.model.update(patch_size=8, embed_dim=96, depth=4, num_heads=4, drop_path=0.0)


def volume_input(roi: tuple) -> dict:
  """input settings of a volume config.

  roi: the crop the model sees, a multiple of the patch (SelfMedMAE's 96^3 at 1.5 x 1.5 x 2 mm
  on BTCV). spacing: every volume resampled to it (mm per axis; (): as stored). modality and
  ct_window: the intensity normalisation (data_pipelines/volumes.normalize: CT clipped to the
  window, MR z-scored over the foreground). foreground_share: segmentation crops centred on a
  labelled voxel, the rest anywhere (MONAI's positive:negative 1:1). overlap: between the
  windows of sliding-window inference. Augmentation (MONAI's UNETR recipe): flip, random flips
  along each axis; rotate90, quarter turns in the square planes; intensity, the random scale
  and shift. Flips and turns swap structures told apart by where they lie (left and right
  kidneys, anterior and posterior hippocampus), which a long schedule learns from shape alone
  and a short one does not.
  """
  return dict(roi=roi, spacing=(), modality="MR", ct_window=(-175.0, 250.0),
              foreground_share=0.5, overlap=0.5, flip=True, rotate90=True, intensity=0.1)


def vit_finetune(kind: str, ndim: int, variant: str = ""):
  """A locked fine-tuning config of the ViT: UNETR (segmentation) or the ViT classifier, on
  images (ndim 2) or volumes (ndim 3: data.csv names NIfTI volumes, image,mask columns, or is
  a Decathlon folder). SelfMedMAE's recipe: layer-wise lr decay 0.75, Dice + cross-entropy."""
  c = finetune_defaults(kind)
  c.model = {**vit_model(), **FINETUNE_RECIPES[kind]["vit_head"]}
  c.optim.layer_decay = 0.75
  if ndim == 3:
    c.input = volume_input((96, 96, 96))
    c.batch_size, c.eval_batch_size = 4, 4
    c.data.group_column = ""  # a volume per subject, as in the Decathlon
  return apply_vit_finetune_variant(c, variant, ndim).lock()


def swin_unetr_model() -> dict:
  """MONAI's SwinUNETR defaults, with BTCV's feature size: embed_dim is MONAI's feature_size
  (a multiple of 12, as MONAI requires); merge_order, MONAI's `downsample` ("merging" or
  "mergingv2", models/swin.py MERGE_ORDERS); use_v2, SwinUNETR-v2's convolution before each
  stage."""
  return dict(arch="swinunetr", in_chans=1, patch_size=2, embed_dim=48, depths=(2, 2, 2, 2),
              num_heads=(3, 6, 12, 24), window=7, drop_path=0.0, merge_order="merging",
              use_v2=False, remat=False, remat_policy="nothing_saveable", attention="einsum")


def swin_unetr_finetune(ndim: int = 3, variant: str = ""):
  """A locked SwinUNETR fine-tuning config on volumes (ndim 3, as vit_finetune's) or images
  (ndim 2). MONAI's BTCV recipe: crops of 96^3, AdamW at lr 1e-4 with weight decay 1e-5.

  Variants: `cpu` (the hippocampus on 2 cores: crops of 32^3, feature size 12, windows of 4,
  no flips or turns, lr 1e-3 over at least 400 steps), `tiny` (the same on 40 steps, tests).
  """
  c = finetune_defaults("segmentation")
  c.model = swin_unetr_model()
  c.optim.update(lr=1e-4, weight_decay=1e-5)
  if ndim == 3:
    c.input = volume_input((96, 96, 96))
    c.batch_size, c.eval_batch_size = 2, 2
    c.data.group_column = ""
  for name in variant_names(variant, ("cpu", "tiny")):
    c.model.update(embed_dim=12, window=4)
    cpu_schedule(c, name, ndim, roi=(32, 32, 32))
  return c.lock()


def cpu_schedule(c: ml_collections.ConfigDict, name: str, ndim: int, roi: tuple):
  """What the 2-core variants (`name`) of the ViT and SwinUNETR fine-tuning share: lr 1e-3 over
  at least 400 steps; 3-D crops of `roi` (32^3 for `tiny`), 4 a batch, no flips or turns
  (hundreds of steps, not nnU-Net's 250,000: see volume_input); 2-D 64 px images. `tiny`: 40
  steps, for tests."""
  c.min_steps, c.log_every, c.checkpoint_every = 400, 50, 100
  c.optim.update(lr=1e-3, warmup_epochs=3.0)
  c.num_epochs = 30.0 if ndim == 2 else 100.0
  if ndim == 3:
    c.input.roi = (32, 32, 32) if name == "tiny" else roi
    c.batch_size = c.eval_batch_size = 4
    c.input.update(flip=False, rotate90=False)
  else:
    c.input.image_size = 64
    c.batch_size = c.eval_batch_size = 16
  if name == "tiny":
    c.total_steps, c.checkpoint_every, c.log_every = 40, 20, 10
    c.optim.warmup_epochs = 0.2


def finetune_base(arch: str, kind: str, ndim: int):
  """The unlocked defaults of a fine-tuning config of this encoder family, kind and ndim."""
  if arch == "vit":
    return vit_finetune(kind, ndim).unlock()
  if arch == "swinunetr":
    return swin_unetr_finetune(ndim).unlock()
  return finetune_defaults(kind)


def apply_vit_finetune_variant(c: ml_collections.ConfigDict, variant: str, ndim: int):
  """The ViT fine-tuning variants, for 2-core machines.

  cpu:  vit_cpu_model's ViT; 2-D 64 px images; 3-D crops of 32 x 48 x 32 voxels (the
        Decathlon hippocampus: volumes of about 35 x 50 x 36 at 1 mm): 4 x 6 x 4 tokens, where
        MONAI's 16-voxel patches would leave 2 x 3 x 2; UNETR's feature size 8 (cpu_schedule).
  tiny: the same models on a 40-step schedule, 3-D on crops of 32^3, for tests.
  """
  for name in variant_names(variant, ("sample", "cpu", "tiny")):
    vit_cpu_model(c)
    if "feature_size" in c.model:
      c.model.feature_size = 8
    cpu_schedule(c, name, ndim, roi=(32, 48, 32))
  return c
