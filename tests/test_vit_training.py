"""SelfMedMAE's family through the command line: ViT-MAE pretraining and UNETR fine-tuning in 2-D
and on volumes (configs/vit_mae2d.py, unetr2d.py, vit_mae3d.py, unetr3d.py, vit_cls.py)."""
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import ROOT, load_config, main_env, picture, read_metrics, run_main
from helpers import synthetic_decathlon

from vismae_jax import config_checks, config_lib
from vismae_jax.train import finetune, optim


def test_layer_decay_counts_the_vit_blocks_and_puts_heads_on_top():
  config = load_config("unetr3d.py", "tiny")
  params = jax.eval_shape(finetune.functions(config).init_params, jax.random.PRNGKey(0))
  ids = optim.layer_ids(params)
  top = config.model.depth + 1
  assert ids["encoder"]["patch_embed"]["proj"]["kernel"] == 0
  assert ids["encoder"]["blocks_0"]["attn"]["qkv"]["kernel"] == 1
  assert ids["encoder"]["blocks_3"]["mlp"]["fc2"]["bias"] == 4
  assert ids["encoder"]["norm"]["scale"] == top
  assert ids["decoder4"] and all(v == top for v in jax.tree.leaves(ids["decoder4"]))
  assert all(v == top for v in jax.tree.leaves(ids["encoder1"]))  # UNETR's image skip


@pytest.mark.parametrize("config_file,overrides,message", [
    ("unetr3d.py", {"model.patch_size": 12}, "UNETR decodes from a patch of 2^k >= 4"),
    ("unetr3d.py", {"input.roi": (32, 36, 32)}, "must be a multiple of config.model.patch_size"),
    ("unetr2d.py", {"model.num_heads": 5}, "a multiple of config.model.num_heads=5"),
    ("vit_mae3d.py", {"data.source": "shards"}, "volumes (3-D records) go with a"),
    ("vit_mae2d.py", {"mae.decoder_heads": 3}, "config.mae.decoder_dim=64"),
    ("vit_mae2d.py", {"method": "mae"}, "mae pretrains config.model.arch='swin' (vit_mae the"),
    ("swin_unetr3d.py", {"input.roi": (32, 48, 32)}, "must be a multiple of 32 along every"),
    ("swin_unetr3d.py", {"model.embed_dim": 16}, "must be a multiple of 12, as MONAI's"),
    ("swin_unetr3d.py", {"model.depths": (2, 2, 2)}, "SwinUNETR has 4 stages"),
    ("swin_unetr3d.py", {"model.merge_order": "smit"}, "expected one of ('merging', "),
    ("swin_unetr3d.py", {"finetune.kind": "classification"}, "'swinunetr' segments"),
    ("unetr3d.py", {"task": "predict"}, "volumes are fine-tuned and scored by the protocol"),
])
def test_vit_and_swin_unetr_configs_fail_naming_the_setting(tmp_path, config_file, overrides,
                                                           message):
  config = load_config(config_file, "tiny")
  config.data.update({"csv": str(tmp_path)} if "finetune" in config else {"path": str(tmp_path)})
  for key, value in overrides.items():
    *sections, name = key.split(".")  # a dotted setting
    target = config
    for section in sections:
      target = target[section]
    target[name] = value
  with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
    config_checks.validate(config, 1, 1)


# The tiny ViT encoder's tensors: the patch embedding's 2, 12 in each of 4 blocks, the norm's 2.
TINY_ENCODER_TENSORS = 2 + 4 * 12 + 2


def assert_encoder_loaded(log: str):
  """The transfer table in the log: the whole encoder loaded by name, the decoder left out."""
  assert re.search(rf"loaded\s+{TINY_ENCODER_TENSORS}\s+encoder/", log), log[-3000:]
  assert re.search(r"unused from the checkpoint\s+\d+\s+decoder/", log), log[-3000:]


def losses_fell(workdir, share: float = 0.8) -> list:
  losses = [m["loss"] for m in read_metrics(workdir) if "loss" in m]  # not validation lines
  assert np.mean(losses[-2:]) < share * losses[0], losses
  return losses


@pytest.mark.slow
def test_swin_unetr2d_fine_tunes_on_images(tmp_path, sample_segmentation_csv):
  """SwinUNETR on 2-D images falls out of the same code: the 2-D protocol runs it."""
  workdir = str(tmp_path / "swin_unetr2d")
  run_main(workdir, f"--config.data.csv={sample_segmentation_csv}",
           "--config.protocol.max_folds=1", "--config.total_steps=20",
           config="configs/swin_unetr2d.py:tiny")
  losses = [m["loss"] for m in read_metrics(os.path.join(workdir, "runs",
                                                       "random_labels100_fold0")) if "loss" in m]
  assert losses[-1] < 0.95 * losses[0], losses
  with open(os.path.join(workdir, "report.json")) as f:
    assert 0 <= json.load(f)["by_fraction"]["1.0"]["random"]["mean"] <= 1


@pytest.mark.slow
def test_vit_mae2d_pretrains_and_unetr2d_fine_tunes_from_it(tmp_path, sample_segmentation_csv):
  """ViT-MAE on the bundled sample lowers its loss; UNETR-2D takes its encoder by name and runs
  the protocol against random initialisation."""
  pretrain = str(tmp_path / "pretrain")
  run_main(pretrain, "--config.total_steps=40", config="configs/vit_mae2d.py:tiny")
  losses_fell(pretrain)
  assert picture(os.path.join(pretrain, "reconstructions.png"))["grey_std"] > 10
  workdir = str(tmp_path / "unetr")
  proc = run_main(workdir, f"--config.data.csv={sample_segmentation_csv}",
                  f"--config.finetune.pretrained={pretrain}", "--config.protocol.max_folds=1",
                  "--config.protocol.compare_random=True", config="configs/unetr2d.py:tiny")
  assert_encoder_loaded(proc.stderr)
  with open(os.path.join(workdir, "report.json")) as f:
    entry = json.load(f)["by_fraction"]["1.0"]
  assert set(entry) >= {"pretrained", "random"}
  # The boxes sit in the same place in every image (a twelfth of it): marking every pixel as
  # foreground would score Dice 2 * (1/12) / (1 + 1/12) = 0.154; the runs must find the box.
  assert all(entry[i]["mean"] > 2 / 13 for i in ("pretrained", "random"))


@pytest.mark.slow
def test_volumes_ingest_pretrain_and_fine_tune_unetr3d(tmp_path):
  """Volumes end to end: ingest into volume shards, ViT-MAE-3D lowers its loss on their crops,
  UNETR-3D takes its encoder and runs the protocol on whole volumes (sliding windows), with
  Dice per structure, HD95 in mm and overlays."""
  msd = synthetic_decathlon(tmp_path / "msd")
  shards = str(tmp_path / "volume_shards")
  subprocess.run([sys.executable, "-m", "data_pipelines.volume_ingest",
                  f"--input={msd}/imagesTr", f"--output={shards}", "--salt=test",
                  "--modality=MR"], cwd=ROOT, env=main_env(), check=True, capture_output=True,
                 timeout=300)
  pretrain = str(tmp_path / "pretrain")
  run_main(pretrain, f"--config.data.path={shards}", "--config.total_steps=40",
           config="configs/vit_mae3d.py:tiny")
  losses_fell(pretrain, share=0.92)  # from about 1: the normalised patches' variance
  assert picture(os.path.join(pretrain, "reconstructions.png"))["grey_std"] > 10
  workdir = str(tmp_path / "unetr3d")
  proc = run_main(workdir, f"--config.data.csv={msd}", f"--config.finetune.pretrained={pretrain}",
                  "--config.finetune.num_classes=3", "--config.protocol.folds=2",
                  "--config.protocol.max_folds=1", "--config.protocol.val_fraction=0.25",
                  "--config.protocol.compare_random=True", "--config.total_steps=40",
                  config="configs/unetr3d.py:tiny")
  assert_encoder_loaded(proc.stderr)
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  assert report["units"] == {"hd95": "mm"}
  entry = report["by_fraction"]["1.0"]
  for init in ("pretrained", "random"):
    assert len(entry[init]["class_dice"]) == 2  # the two structures, background left out
    assert 0 <= entry[init]["mean"] <= 1 and np.isfinite(entry[init]["hd95"])
  run = os.path.join(workdir, "runs", "pretrained_labels100_fold0")
  losses_fell(run, share=0.9)
  with np.load(os.path.join(run, "test_predictions.npz")) as saved:
    maps = [saved[k] for k in saved.files]
  assert len(maps) == 4 and all(m.ndim == 3 and m.max() <= 2 for m in maps)
  with open(os.path.join(workdir, "report.md")) as f:
    text = f.read()
  assert "| hd95 (mm) |" in text and "| labels | init | class 1 | class 2 |" in text
  assert picture(os.path.join(workdir, "overlays.png"))["lime"] > 1e-4  # the structures' outlines
