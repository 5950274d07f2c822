"""Building and validating run configs.

Config files in configs/ are thin: they pick modalities (or a fine-tuning kind) and a variant
and call `pretrain()` or `finetune()`. The defaults here double as the schema: the configs are
locked, so a key that they do not define is a typo that fails where it is set (ml_collections
names the closest key), and `validate()` rejects every inconsistent value before any work.
"""
import json
import os

import flax
import jax
import ml_collections

from data_pipelines import records
from vismae_jax import preprocess

TASKS = ("pretrain", "finetune", "predict", "evaluate", "export")
# What each task can run: pretraining and export from either kind of config, fine-tuning,
# prediction and evaluation from a fine-tuning config only.
FINETUNE_TASKS = ("finetune", "predict", "evaluate")
SEGMENTATION = "segmentation"
FINETUNE_KINDS = (SEGMENTATION, "classification")
DTYPES = ("float32", "bfloat16")
MASKINGS = ("random", "uniform")
# Pretraining methods of the same Swin encoder: SwinMAE (models/mae.py), SimMIM
# (models/simmim.py), SimCLR (models/simclr.py), DINO with iBOT's masked tokens (models/dino.py).
METHODS = ("mae", "simmim", "simclr", "dino", "vit_mae")
# The encoder families: the Swin Transformer (VIS-MAE's) and the plain ViT (SelfMedMAE's
# MAE, UNETR and classifier, models/vit.py and unetr.py, in 2D and 3D; method vit_mae only).
ARCHS = ("swin", "vit")
ATTENTIONS = ("einsum", "xla", "cudnn")  # models/swin.py's attend()
# jax.checkpoint_policies for rematerialised blocks: save nothing, every matmul's output, or
# those of matmuls without batch dimensions (the Dense layers, not attention's).
REMAT_POLICIES = ("nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable")
# shards and sample: 2-D records (data_pipelines.ingest); volumes: 3-D records
# (data_pipelines.volume_ingest), for a config with input.roi.
DATA_SOURCES = ("shards", "sample", "volumes")

# Settings that say where and how a run executes, never what it computes: a workdir resumes
# under other values of these.
EXECUTION = ("mesh", "model.remat", "model.remat_policy", "model.attention", "data.workers",
             "log_every", "keep_checkpoints", "figure_images", "eval_batch_size", "predict")
# One run may also continue with another schedule length or validation interval (it goes on
# from its checkpoint), and does not depend on which other runs its protocol does.
RUN_RESUMABLE = EXECUTION + ("checkpoint_every", "total_steps", "num_epochs", "min_steps",
                             "protocol")
# A protocol reuses finished runs, so only the choice of runs may change.
PROTOCOL_RESUMABLE = EXECUTION + ("protocol.max_folds", "protocol.fractions",
                                  "protocol.compare_random", "protocol.repeats",
                                  "protocol.shots", "protocol.shot_draws")


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and the fix."""


def pretrain_defaults() -> ml_collections.ConfigDict:
  """The VIS-MAE-Generic run: the release's SwinMAE, recipe and schedule."""
  c = ml_collections.ConfigDict()
  c.task = "pretrain"
  c.seed = 0
  c.method = "mae"  # one of METHODS; configs/simmim.py, simclr.py, dino.py set theirs

  # How the model computes, never what (EXECUTION): remat recomputes blocks in the backward
  # pass, keeping what remat_policy (one of REMAT_POLICIES) saves; attention picks the window
  # attention's implementation (ATTENTIONS).
  c.model = dict(arch="swin", in_chans=3, patch_size=4, embed_dim=96, depths=(2, 2, 2, 2),
                 decoder_depths=(2, 2, 2), num_heads=(3, 6, 12, 24), window=7, drop_path=0.1,
                 remat=False, remat_policy="nothing_saveable", attention="einsum")
  # The masking of the masked-image methods (SimMIM's: 32 px units, ratio 0.6; iBOT's in DINO:
  # the last stage's units, ratio 0.3 on half the images; `pretrain`).
  # masking: "random", the release's (the encoder computes every token, masked ones too);
  # "uniform", sparse, SwinMAE only: one unit of every 2x2 block kept, the encoder runs on those
  # alone (a quarter of the tokens), secondary_ratio of them hidden behind the mask token again
  # (models/mae.py; benchmarks/results/README.md measures both).
  c.mae = dict(mask_ratio=0.75, mask_unit=16, norm_pix_loss=False, masking="random",
               secondary_ratio=0.25)
  # The augmented views of SimCLR and DINO: input.crop_scale's crop (SimCLR's (0.08, 1), DINO's
  # global (0.32, 1), set by `pretrain`) and input.hflip, brightness and contrast jitter
  # (SimCLR's colour strength 0.5: grey images have no saturation or hue), and with probability
  # blur_prob a Gaussian blur of sigma in blur_sigma px.
  c.views = dict(brightness=0.4, contrast=0.4, blur_prob=0.5, blur_sigma=(0.1, 2.0))
  # SimCLR (method="simclr"): temperature 0.1, the paper's best at its 4096 batch (ours: 5120);
  # projection_dims, the projection head's (hidden, output) widths (the paper's 2048 -> 128).
  c.simclr = dict(temperature=0.1, projection_dims=(2048, 128))
  # DINO + iBOT (method="dino"): a head (hidden, bottleneck, prototypes) shared by the pooled
  # and the patch tokens, iBOT's 8192 prototypes; student and teacher temperatures; the
  # teacher's EMA momentum, from `momentum` to 1 on a cosine over the run; the centres' momentum;
  # local_crops extra views of local_size px from local_scale of the area (multi-crop: the
  # student alone sees them); mask_prob of the student's global views masked (iBOT); the
  # weight of the masked-token loss against the pooled one.
  c.dino = dict(head_dims=(2048, 256, 8192), student_temp=0.1, teacher_temp=0.04,
                momentum=0.996, center_momentum=0.9, local_crops=6, local_size=96,
                local_scale=(0.05, 0.32), mask_prob=0.5, patch_weight=1.0)
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


def apply_variant(c: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
  """Config-file argument (`configs/generic.py:sample`): comma-separated variant names.

  sample: the bundled real images and a 0.4M-parameter SwinMAE at 64 px, 2000 steps: minutes on
          a 2-core CPU, and long enough to leave MAE's early predict-the-mean plateau, which a
          wider model at 128 px does not leave in that time. Mask units of 8 px: 16 px units
          would leave 4 visible squares of a 64 px image (the paper's 224 px leave 49), and
          pretrained so the label-efficiency protocol fine-tuned worse
          (benchmarks/results/README.md). SimMIM's units are 16 px, ratio 0.6: its
          32 px would be 2x2 units per image, one of them visible; at 16 px 6 of 16 stay
          visible, near the share of SimMIM's 224 px (19 of 49).
  tiny:   the sample's model on a 20-step schedule, for tests.
  """
  for name in filter(None, variant.split(",")):
    if name in ("sample", "tiny"):
      c.data.source = "sample"
      c.model.update(in_chans=1, embed_dim=16, depths=(2, 1, 1, 1), decoder_depths=(1, 1, 1),
                     num_heads=(1, 1, 2, 2), window=4, drop_path=0.0)
      c.input.image_size = 64
      c.mae.mask_unit = 8 if c.method == "mae" else 16
      # SimCLR at 64 px and batch 16: crops of at least 20% of the area (8% is 18 px), blur
      # scaled from 224 px, a head as wide as the last stage, temperature 0.2 and lr 5e-4
      # (on the sample, 0.5 learned more slowly in 40 steps and lr 2e-3 collapsed the
      # embeddings to one point: the loss went to log(2N - 1)).
      if c.method in ("simclr", "dino"):
        c.views.blur_sigma = (0.1, 0.6)
      if c.method == "simclr":
        c.input.crop_scale = (0.2, 1.0)
        c.simclr.update(temperature=0.2, projection_dims=(128, 32))
      # DINO at 64 px: units of the last stage's 32 px would be 4 per image, so 16 px; two
      # local crops of 32 px; a head as wide as the last stage.
      if c.method == "dino":
        c.mae.mask_unit = 16
        c.dino.update(head_dims=(128, 32, 256), local_crops=2, local_size=32)
      c.batch_size = 16
      c.num_epochs = 125.0
      c.optim.update(lr=5e-4 if c.method in ("simclr", "dino") else 2e-3, warmup_epochs=5.0)
      c.log_every = 100
      c.checkpoint_every = 500
    if name == "tiny":
      c.batch_size = 8
      c.total_steps = 20
      c.optim.warmup_epochs = 0.2
      c.log_every = 5
      c.checkpoint_every = 10
      c.figure_images = 4
    elif name != "sample":
      raise ConfigError(f"unknown config variant {name!r}; known: sample, tiny")
  return c


def pretrain(modalities=(), variant: str = "", method: str = "mae"):
  """A locked pretraining config: values may change, keys may not.

  method="simmim" also takes SimMIM's masking (32 px units, 60% masked), which the variants
  adapt to their image size; method="simclr" SimCLR's crop scale (0.08 to 1 of the area);
  method="dino" DINO's global crops (0.32 to 1) and iBOT's masking (32 px units, 30%).
  """
  c = pretrain_defaults()
  c.data.modalities = tuple(modalities)
  c.method = method
  if method == "simmim":
    c.mae.update(mask_unit=32, mask_ratio=0.6)
  if method == "simclr":
    c.input.crop_scale = (0.08, 1.0)
  if method == "dino":
    c.input.crop_scale = (0.32, 1.0)
    c.mae.update(mask_unit=32, mask_ratio=0.3)
  return apply_variant(c, variant or "").lock()


def remat_policy(model_config):
  """The models' `remat`: the policy's name when blocks are rematerialised, else None."""
  return model_config.remat_policy if model_config.remat else None


def finetune_defaults(kind: str = "segmentation") -> ml_collections.ConfigDict:
  """VIS-MAE fine-tuning: the release's Swin-UNet / classifier recipe, run as a protocol."""
  seg = kind == "segmentation"
  c = ml_collections.ConfigDict()
  c.task = "finetune"
  c.seed = 0
  c.model = dict(arch="swin", in_chans=3, patch_size=4, embed_dim=96,
                 depths=(2, 2, 6, 2) if seg else (2, 2, 2, 2), num_heads=(3, 6, 12, 24),
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
  c.batch_size = 32 if seg else 48
  c.eval_batch_size = 32
  c.num_epochs = 150.0 if seg else 50.0
  c.total_steps = 0
  # min_steps: every run trains at least this many steps, so that a small label fraction is
  # not stopped before it learns anything (epochs of a few dozen images are a few steps).
  c.min_steps = 0
  # layer_decay < 1: layer-wise learning-rate decay (e.g. 0.75; 1: off, as the release).
  c.optim = dict(lr=1e-3, lr_batch_base=0, b1=0.9, b2=0.999, weight_decay=0.05,
                 decay_norms_biases=True, warmup_epochs=40.0 if seg else 10.0, clip_norm=0.0,
                 layer_decay=1.0)
  c.mesh = dict(data=-1, fsdp=1, fsdp_min_mb=1.0)
  c.dtype = "float32"
  c.log_every = 50
  c.checkpoint_every = 200  # steps between checkpoints and validations
  c.keep_checkpoints = 1
  return c


def apply_finetune_variant(c: ml_collections.ConfigDict, variant: str):
  """`cpu`: 64 px models for 2-core machines (Swin-UNet 0.44M, classifier 0.31M parameters).

  cpu shortens the schedules (segmentation 30 epochs, classification 40, at least 400 steps) so
  that the 80 runs of the label-efficiency protocol fit an hour or so on 2 cores, and
  classification uses layer-wise lr decay 0.65, which kept more of the pretrained encoder (a
  higher AUC in a 2-fold check).
  """
  seg = c.finetune.kind == "segmentation"
  for name in filter(None, variant.split(",")):
    if name not in ("cpu", "tiny"):
      raise ConfigError(f"unknown config variant {name!r}; known: cpu, tiny")
    c.model.update(in_chans=1, embed_dim=16, num_heads=(1, 1, 2, 2), window=4, drop_path=0.0)
    c.model.depths = (2, 1, 1, 1)
    c.input.image_size = 64
    c.batch_size = c.eval_batch_size = 16
    c.num_epochs = 30.0 if seg else 40.0
    c.min_steps = 400
    c.optim.update(lr=2e-3, warmup_epochs=3.0, layer_decay=1.0 if seg else 0.65)
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


def vit_pretrain(ndim: int, variant: str = ""):
  """A locked ViT-MAE pretraining config (method vit_mae) on images (ndim 2: 2-D shards, as the
  Swin methods) or volumes (ndim 3: volume shards, data_pipelines.volume_ingest).

  MAE's recipe: the encoder sees the visible 25% of the tokens (3-D: 87.5%, the ratio the issue
  reports SelfMedMAE found best on volumes), a 512-wide 8-block decoder, MSE on each masked
  patch normalised by its own mean and variance; AdamW lr 1.5e-4 per 256 images.
  """
  c = pretrain_defaults()
  c.method = "vit_mae"
  c.model = vit_model()
  c.mae = dict(mask_ratio=0.75 if ndim == 2 else 0.125, norm_pix_loss=True, decoder_dim=512,
               decoder_depth=8, decoder_heads=16)
  for unused in ("views", "simclr", "dino"):
    del c[unused]
  c.optim.update(lr=1.5e-4, lr_batch_base=256)
  c.batch_size = 1024 if ndim == 2 else 64
  if ndim == 3:
    c.input = dict(roi=(96, 96, 96), intensity=0.1)
    c.data = dict(source="volumes", path="", workers=0)
    c.figure_images = 4
  return apply_vit_variant(c, variant, ndim).lock()


def vit_finetune(kind: str, ndim: int, variant: str = ""):
  """A locked fine-tuning config of the ViT: UNETR (segmentation) or the ViT classifier, on
  images (ndim 2) or volumes (ndim 3: data.csv names NIfTI volumes, image,mask columns, or is
  a Decathlon folder). SelfMedMAE's recipe: layer-wise lr decay 0.75, Dice + cross-entropy."""
  c = finetune_defaults(kind)
  c.model = vit_model()
  if kind == SEGMENTATION:
    c.model.feature_size = 16
  c.optim.layer_decay = 0.75
  if ndim == 3:
    c.input = volume_input((96, 96, 96))
    c.batch_size, c.eval_batch_size = 4, 4
    c.data.group_column = ""  # a volume per subject, as in the Decathlon
  return apply_vit_variant(c, variant, ndim).lock()


def apply_vit_variant(c: ml_collections.ConfigDict, variant: str, ndim: int):
  """The ViT configs' variants, for 2-core machines.

  sample / cpu: a 4-block ViT of width 96 (0.5M parameters) on patches of 8 and a 2-block
          decoder of 64; 2-D at 64 px on the bundled sample (pretraining) or 64 px images
          (fine-tuning): 8 x 8 tokens; 3-D on crops of 32 x 48 x 32 voxels (the Decathlon
          hippocampus: volumes of about 35 x 50 x 36 at 1 mm): 4 x 6 x 4 tokens, where MONAI's
          16-voxel patches would leave 2 x 3 x 2; UNETR's feature size 8, no flips or turns
          (after 150 steps with them the anterior hippocampus had Dice 0: every voxel was
          called posterior).
  tiny:   the same models on 20-step (pretraining) or 40-step (fine-tuning) schedules, 3-D on
          crops of 32^3, for tests.
  """
  pretraining = "finetune" not in c
  for name in filter(None, (variant or "").split(",")):
    if name not in ("sample", "cpu", "tiny"):
      raise ConfigError(f"unknown config variant {name!r}; known: sample, cpu, tiny")
    c.model.update(patch_size=8, embed_dim=96, depth=4, num_heads=4, drop_path=0.0)
    if pretraining:
      c.mae.update(decoder_dim=64, decoder_depth=2, decoder_heads=4)
      c.optim.update(lr=1.5e-3, lr_batch_base=0, warmup_epochs=5.0)
      c.batch_size, c.num_epochs, c.log_every, c.checkpoint_every = 16, 125.0, 100, 500
      if ndim == 2:
        c.data.source = "sample"
    else:
      c.min_steps, c.log_every, c.checkpoint_every = 400, 50, 100
      c.optim.update(lr=1e-3, warmup_epochs=3.0)
      c.num_epochs = 30.0 if ndim == 2 else 100.0
    if "feature_size" in c.model:
      c.model.feature_size = 8
    if ndim == 3:
      c.input.roi = (32, 48, 32)
      c.batch_size = c.eval_batch_size = 8 if pretraining else 4
      if not pretraining:  # hundreds of steps, not nnU-Net's 250,000: see volume_input
        c.input.update(flip=False, rotate90=False)
    else:
      c.input.image_size = 64
      c.batch_size = 16
      if not pretraining:
        c.eval_batch_size = 16
    if name == "tiny":
      c.total_steps, c.checkpoint_every, c.log_every = (20, 10, 5) if pretraining else (40, 20, 10)
      c.optim.warmup_epochs = 0.2
      if ndim == 3:
        c.input.roi = (32, 32, 32)
  return c


def check_unchanged(config, saved: dict, may_change: tuple, where: str) -> None:
  """Raises ConfigError naming every setting of `config` that differs from `saved` (the config,
  as a dict, that `where` was made with), except those under the `may_change` prefixes.

  Why: a workdir is resumed by rerunning its command; under a changed recipe it would silently
  mix two runs, or fail deep inside the checkpoint restore.
  """
  def flat(c):
    return {k: v for k, v in flax.traverse_util.flatten_dict(c, sep=".").items()
            if not any(k == m or k.startswith(m + ".") for m in may_change)}
  # Settings added since `saved` was written count as their defaults, which keep the old behaviour.
  now = flat(json.loads(config.to_json()))
  before = {**flat(json.loads(defaults_of(config).to_json())),
            **flat(json.loads(json.dumps(saved)))}
  differ = sorted(k for k in now.keys() | before.keys() if now.get(k) != before.get(k))
  if differ:
    raise ConfigError(
        f"{where} was made with another config: "
        + "; ".join(f"{k}={now.get(k)!r} here, {before.get(k)!r} there" for k in differ)
        + ". Use a new workdir, or that config.")


def defaults_of(config) -> ml_collections.ConfigDict:
  """The defaults of `config`'s kind of run: fine-tuning (of its kind) or pretraining, of its
  encoder and dimensions."""
  ndim = len(spatial_shape(config))
  if "finetune" in config:
    if config.model.arch == "vit":
      return vit_finetune(config.finetune.kind, ndim).unlock()
    return finetune_defaults(config.finetune.kind)
  return vit_pretrain(ndim).unlock() if config.model.arch == "vit" else pretrain_defaults()


def validate(config, device_count: int, process_count: int) -> None:
  """Raises ConfigError listing every problem, each with the field and the fix."""
  if config.get("task") not in TASKS:
    raise ConfigError(f"config.task={config.get('task')!r}: expected one of {TASKS}")
  finetuning = "finetune" in config  # a fine-tuning config, whatever its task (export too)
  if finetuning and config.finetune.kind not in FINETUNE_KINDS:
    raise ConfigError(f"config.finetune.kind={config.finetune.kind!r}: expected one of "
                      f"{FINETUNE_KINDS}")
  if config.task in FINETUNE_TASKS and not finetuning:
    raise ConfigError(f"config.task={config.task!r} needs a fine-tuning config "
                      "(configs/finetune_seg.py or configs/finetune_cls.py)")
  errors = []

  def check(ok, message):
    if not ok:
      errors.append(message)

  _check_model(config, check)
  check(config.task != "export" or config.model.arch == "swin",
        "config.task='export' writes the release's Swin models under their PyTorch names; a ViT "
        "checkpoint stays in Orbax (config.model.arch='vit')")
  if config.task in ("predict", "evaluate"):
    _check_apply(config, device_count, check)
  elif config.task != "export":  # exporting needs the model only
    (_check_finetune if finetuning else _check_pretrain)(config, check)
    _check_run(config, device_count, process_count, check)
  if errors:
    raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def _positive(config, names, check) -> bool:
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


def _check_model(config, check):
  """The model geometry every task shares: the ViT's (_check_vit) or the Swin's."""
  m = config.model
  check(config.dtype in DTYPES, f"config.dtype={config.dtype!r}: expected one of {DTYPES}")
  check(m.attention in ATTENTIONS,
        f"config.model.attention={m.attention!r}: expected one of {ATTENTIONS}")
  if m.attention == "cudnn":
    check(jax.default_backend() == "gpu" and config.dtype == "bfloat16",
          f"config.model.attention='cudnn' runs cuDNN's fused kernel, on a GPU in bfloat16 only "
          f"(here {jax.default_backend()}, config.dtype={config.dtype!r}); 'einsum' or 'xla' "
          "compute the same anywhere")
  if m.arch not in ARCHS:
    check(False, f"config.model.arch={m.arch!r}: expected one of {ARCHS}")
  elif m.arch == "vit":
    _check_vit(config, check)
  else:
    _check_swin(config, check)


def _check_vit(config, check):
  m = config.model
  dims = "input.roi" if volumetric(config) else "input.image_size"
  if not _positive(config, ("model.in_chans", "model.patch_size", "model.embed_dim",
                            "model.depth", "model.num_heads", dims), check):
    return
  shape = spatial_shape(config)
  check(m.embed_dim % m.num_heads == 0 and m.embed_dim % 2 == 0 and m.embed_dim >= 2 * len(shape),
        f"config.model.embed_dim={m.embed_dim}: must be even, at least {2 * len(shape)} (its "
        f"sine-cosine table) and a multiple of config.model.num_heads={m.num_heads}")
  check(all(s % m.patch_size == 0 for s in shape),
        f"config.{dims}={shape if volumetric(config) else shape[0]} must be a multiple of "
        f"config.model.patch_size={m.patch_size} along every axis")
  if config.get("finetune", {}).get("kind") == SEGMENTATION:
    k = m.patch_size.bit_length() - 1
    check(m.patch_size >= 4 and m.patch_size == 2 ** k and m.depth >= k,
          f"config.model.patch_size={m.patch_size}, depth={m.depth}: UNETR decodes from a patch "
          "of 2^k >= 4 (MONAI's 16) and taps k blocks (models/unetr.py)")


def volumetric(config) -> bool:
  """Whether `config` runs on volumes (3-D crops of input.roi) rather than 2-D images."""
  return "roi" in config.input


def spatial_shape(config) -> tuple[int, ...]:
  """The spatial shape of one model input: the 3-D ROI, or the 2-D image's square."""
  return tuple(config.input.roi) if volumetric(config) else (config.input.image_size,) * 2


def input_shape(config) -> tuple[int, ...]:
  """One model input's shape: (*spatial, channels)."""
  return (*spatial_shape(config), config.model.in_chans)


def _check_swin(config, check):
  """The Swin geometry: stages, heads, windows and the image size."""
  m, size = config.model, config.input.image_size
  if not _positive(config, ("model.in_chans", "model.patch_size", "model.embed_dim",
                            "model.depths", "model.num_heads", "model.window",
                            "input.image_size"), check):
    return  # the checks below divide by these
  n_stages = len(m.depths)
  check(m.remat_policy in REMAT_POLICIES,
        f"config.model.remat_policy={m.remat_policy!r}: expected one of {REMAT_POLICIES}")
  check(len(m.num_heads) == n_stages,
        f"config.model.num_heads has {len(m.num_heads)} entries for {n_stages} stages "
        "(config.model.depths): give one head count per stage")
  for i, heads in enumerate(m.num_heads):
    check((m.embed_dim * 2 ** i) % heads == 0,
          f"config.model.num_heads[{i}]={heads} does not divide stage {i}'s width "
          f"{m.embed_dim * 2 ** i} (embed_dim * 2^{i})")
  reduction = m.patch_size * 2 ** (n_stages - 1)
  check(size % reduction == 0,
        f"config.input.image_size={size} must be a multiple of patch_size * 2^(stages-1) = "
        f"{reduction}, so that every patch merging halves an even grid; try "
        f"{max(reduction, size // reduction * reduction)}")


def _check_pretrain(config, check):
  check(config.method in METHODS, f"config.method={config.method!r}: expected one of {METHODS}")
  check((config.method == "vit_mae") == (config.model.arch == "vit"),
        f"config.method={config.method!r} with config.model.arch={config.model.arch!r}: "
        "vit_mae pretrains the ViT, every other method the Swin encoder")
  _check_pretrain_data(config, check)
  if not volumetric(config):
    check(config.input.normalization in preprocess.NORMALIZATIONS,
          f"config.input.normalization={config.input.normalization!r}: expected one of "
          f"{preprocess.NORMALIZATIONS}")
  if config.model.arch == "vit":
    _check_vit_mae(config, check)
  else:
    _check_swin_pretrain(config, check)


def _check_pretrain_data(config, check):
  d = config.data
  check(d.source in DATA_SOURCES, f"config.data.source={d.source!r}: expected one of "
        f"{DATA_SOURCES}")
  check((d.source == "volumes") == volumetric(config),
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


def _check_vit_mae(config, check):
  mae, dims = config.mae, spatial_shape(config)
  if not _positive(config, ("mae.decoder_dim", "mae.decoder_depth", "mae.decoder_heads"), check):
    return
  check(mae.decoder_dim % mae.decoder_heads == 0 and mae.decoder_dim % 2 == 0
        and mae.decoder_dim >= 2 * len(dims),
        f"config.mae.decoder_dim={mae.decoder_dim}: must be even, at least {2 * len(dims)} (its "
        f"sine-cosine table) and a multiple of config.mae.decoder_heads={mae.decoder_heads}")
  check(0.0 < mae.mask_ratio < 1.0, f"config.mae.mask_ratio={mae.mask_ratio}: must be in (0, 1)")


def _check_swin_pretrain(config, check):
  m, size = config.model, config.input.image_size
  n_stages = len(m.depths)
  check(config.method != "mae" or len(m.decoder_depths) == n_stages - 1,
        f"config.model.decoder_depths needs {n_stages - 1} entries (one per encoder stage but "
        f"the last), got {len(m.decoder_depths)}")
  mae = config.mae
  check(mae.mask_unit % m.patch_size == 0,
        f"config.mae.mask_unit={mae.mask_unit} px must be a multiple of config.model.patch_size="
        f"{m.patch_size} (a mask unit covers whole tokens)")
  check(size % mae.mask_unit == 0,
        f"config.input.image_size={size} must be a multiple of config.mae.mask_unit="
        f"{mae.mask_unit}")
  check(0.0 < mae.mask_ratio < 1.0, f"config.mae.mask_ratio={mae.mask_ratio}: must be in (0, 1)")
  check(mae.masking in MASKINGS, f"config.mae.masking={mae.masking!r}: expected one of {MASKINGS}")
  check(mae.masking != "uniform" or config.method == "mae",
        f"config.mae.masking='uniform' is SwinMAE's sparse mode; config.method="
        f"{config.method!r} needs masking='random'")
  if mae.masking == "uniform":
    check(mae.mask_ratio == 0.75,
          f"config.mae.mask_ratio={mae.mask_ratio}: uniform masking keeps one unit in four, so "
          "0.75; hide more with config.mae.secondary_ratio")
    check(size % (2 * mae.mask_unit) == 0,
          f"config.input.image_size={size}: uniform masking needs an even number of mask units "
          f"per side (a multiple of 2 * config.mae.mask_unit = {2 * mae.mask_unit})")
    check(0.0 <= mae.secondary_ratio < 1.0,
          f"config.mae.secondary_ratio={mae.secondary_ratio}: must be in [0, 1)")
  low, high = config.input.crop_scale
  check(0 < low <= high <= 1, f"config.input.crop_scale={tuple(config.input.crop_scale)}: "
        "need 0 < min <= max <= 1 (area fractions)")
  if config.method in ("simclr", "dino"):
    _check_views(config.views, check)
  if config.method == "simclr":
    _check_simclr(config.simclr, check)
  if config.method == "dino":
    _check_dino(config.dino, m.patch_size * 2 ** (n_stages - 1), check)


def _widths(dims, count: int, name: str, what: str, check):
  dims = tuple(dims)
  check(len(dims) == count and all(isinstance(d, int) and d > 0 for d in dims),
        f"{name}={dims}: {count} positive widths, {what}")


def _check_views(views, check):
  for name in ("brightness", "contrast"):
    check(0 <= views[name] < 1, f"config.views.{name}={views[name]}: must be in [0, 1)")
  check(0 <= views.blur_prob <= 1, f"config.views.blur_prob={views.blur_prob}: must be in "
        "[0, 1]")
  low, high = views.blur_sigma
  check(0 < low <= high, f"config.views.blur_sigma={tuple(views.blur_sigma)}: need "
        "0 < min <= max (px)")


def _check_simclr(simclr, check):
  check(simclr.temperature > 0, f"config.simclr.temperature={simclr.temperature}: must be > 0")
  _widths(simclr.projection_dims, 2, "config.simclr.projection_dims", "(hidden, output)", check)


def _check_dino(dino, reduction: int, check):
  _widths(dino.head_dims, 3, "config.dino.head_dims", "(hidden, bottleneck, prototypes)", check)
  for name in ("student_temp", "teacher_temp"):
    check(dino[name] > 0, f"config.dino.{name}={dino[name]}: must be > 0")
  for name in ("momentum", "center_momentum", "mask_prob"):
    check(0 <= dino[name] <= 1, f"config.dino.{name}={dino[name]}: must be in [0, 1]")
  check(dino.local_crops >= 0, f"config.dino.local_crops={dino.local_crops}: must be >= 0")
  check(dino.local_size > 0 and dino.local_size % reduction == 0,
        f"config.dino.local_size={dino.local_size}: must be a positive multiple of patch_size * "
        f"2^(stages-1) = {reduction} px")
  low, high = dino.local_scale
  check(0 < low <= high <= 1, f"config.dino.local_scale={tuple(dino.local_scale)}: need "
        "0 < min <= max <= 1 (area fractions)")
  check(dino.patch_weight >= 0, f"config.dino.patch_weight={dino.patch_weight}: must be >= 0")


def _check_finetune(config, check):
  f, p = config.finetune, config.protocol
  check(f.num_classes >= (2 if f.kind == "segmentation" else 1),
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
  check(not volumetric(config),
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
  if _positive(config, ("eval_batch_size",), check):
    check(config.eval_batch_size % device_count == 0,
          f"config.eval_batch_size={config.eval_batch_size} must be a multiple of the device "
          f"count {device_count}")


def _check_run(config, device_count, process_count, check):
  if not _positive(config, ("batch_size", "log_every", "checkpoint_every", "keep_checkpoints"),
                   check):
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
