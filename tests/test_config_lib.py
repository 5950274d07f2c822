"""Configs are locked schemas that validate themselves before any work and name the fix."""
import glob
import os
import re
import sys

import pytest

from helpers import ROOT, load_config, run_main
from vismae_jax import config_checks, config_lib, main, resume_guard
from vismae_jax.train import methods


@pytest.mark.parametrize("path,modalities", [
    ("generic.py", ()), ("ct.py", ("CT",)), ("mr.py", ("MR",)), ("pet.py", ("PT",)),
    ("xray.py", ("XR",)), ("us.py", ("US",))])
def test_shipped_configs_select_their_modalities_and_validate(path, modalities):
  config = load_config(path)
  assert tuple(config.data.modalities) == modalities
  config.data.path = "/data/shards"
  config_checks.validate(config, device_count=8, process_count=2)
  config_checks.validate(load_config(path, "sample"), device_count=1, process_count=1)


def test_release_recipe_defaults():
  c = load_config("generic.py")
  assert (c.optim.lr, c.optim.b1, c.optim.b2, c.optim.weight_decay) == (1e-3, 0.9, 0.95, 0.05)
  assert (c.num_epochs, c.optim.warmup_epochs, c.mae.mask_ratio, c.mae.mask_unit) == (
      800, 10, 0.75, 16)
  assert tuple(c.model.depths) == (2, 2, 2, 2) and c.model.window == 7


@pytest.mark.parametrize("path,kind,depths,epochs,warmup", [
    ("finetune_seg.py", "segmentation", (2, 2, 6, 2), 150, 40),
    ("finetune_cls.py", "classification", (2, 2, 2, 2), 50, 10)])
def test_finetune_configs_follow_the_release_recipes(path, kind, depths, epochs, warmup, tmp_path):
  config = load_config(path)
  assert config.finetune.kind == kind and tuple(config.model.depths) == depths
  assert (config.num_epochs, config.optim.warmup_epochs, config.optim.lr) == (epochs, warmup, 1e-3)
  csv_path = tmp_path / "labels.csv"
  csv_path.write_text("image,label\na.png,0\n")
  config.data.csv = str(csv_path)
  config_checks.validate(config, device_count=8, process_count=1)
  for variant in ("cpu", "tiny"):
    small = load_config(path, variant)
    small.data.csv = str(csv_path)
    config_checks.validate(small, device_count=1, process_count=1)


def errors_for(device_count=8, process_count=1, **changes):
  config = load_config("generic.py", "sample")
  for dotted, value in changes.items():
    section, _, key = dotted.rpartition("__")
    target = config[section] if section else config
    target[key] = value
  with pytest.raises(config_lib.ConfigError) as info:
    config_checks.validate(config, device_count, process_count)
  return str(info.value)


def test_bad_values_name_the_field_and_the_fix():
  assert "config.input.image_size=100 must be a multiple of patch_size * 2^(stages-1) = 32" in (
      errors_for(input__image_size=100))
  assert "config.batch_size=12 must be a multiple of the device count 8; try 8" in errors_for(
      batch_size=12)
  assert "must split evenly over 3 processes" in errors_for(batch_size=16, process_count=3,
                                                           device_count=1)
  assert "config.mae.mask_unit=18 px must be a multiple of config.model.patch_size=4" in (
      errors_for(mae__mask_unit=18))
  assert "config.model.num_heads[0]=3 does not divide" in errors_for(model__num_heads=(3, 2, 4, 8))
  assert "config.mesh data=3 x fsdp=1 must equal the 8 devices" in errors_for(mesh__data=3)
  assert "config.mesh.fsdp_min_mb=-1.0: must be >= 0" in errors_for(mesh__fsdp_min_mb=-1.0)
  assert "config.dtype='float16'" in errors_for(dtype="float16")
  assert "expected one of ('einsum', 'xla', 'cudnn')" in errors_for(model__attention="flash")
  assert "on a GPU in bfloat16 only (here cpu" in errors_for(model__attention="cudnn")
  assert "unknown modality 'XRAY'" in errors_for(data__modalities=("XRAY",))
  assert "config.input.crop_scale=(0.0, 1.0)" in errors_for(input__crop_scale=(0.0, 1.0))
  assert "config.data.mixture.CT=-1.0: weights must be >= 0" in errors_for(
      data__mixture={"CT": -1.0, "MR": 0.0, "PT": 0.0, "XR": 0.0, "US": 0.0})
  assert "excludes it" in errors_for(data__modalities=("MR",), data__mixture={
      "CT": 1.0, "MR": 1.0, "PT": 0.0, "XR": 0.0, "US": 0.0})
  message = errors_for(data__source="shards", data__path="")
  assert "config.data.path is empty" in message and "configs/generic.py:sample" in message


def test_an_unknown_key_fails_where_it_is_set_with_the_closest_key():
  config = load_config("generic.py", "sample")
  with pytest.raises(AttributeError, match='Did you mean "warmup_epochs" instead of '
                     '"warmup_epoch"'):
    config.optim.warmup_epoch = 5  # a typo: the key is warmup_epochs


def test_the_command_line_names_an_unknown_key_in_one_line(capsys, monkeypatch):
  argv = ["main", "--config=configs/generic.py:tiny", "--workdir=/tmp/unused",
          "--config.optim.lrr=0.1"]
  monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads its overrides from sys.argv
  monkeypatch.chdir(ROOT)
  with pytest.raises(SystemExit) as exit_info:
    main.parse_flags(argv)
  assert exit_info.value.code == 1
  assert capsys.readouterr().err.strip() == (
      "error: a --config override does not fit the config: the config has no setting 'lrr'. "
      'Did you mean "lr" instead of "lrr"?')


def test_a_changed_setting_is_named_and_a_setting_added_since_counts_as_its_default():
  config = config_lib.finetune("classification", "cpu")
  saved = config.to_dict()
  del saved["finetune"]["probe_first"]  # a workdir from before the setting existed
  resume_guard.check_unchanged(config, saved, ("mesh",), "old")
  config.mesh.data = 2  # may change
  resume_guard.check_unchanged(config, saved, ("mesh",), "old")
  config.finetune.probe_first, config.num_epochs = 0.25, 7.0
  with pytest.raises(config_lib.ConfigError, match=r"old was made with another config: "
                     r"finetune.probe_first=0.25 here, 0.0 there; num_epochs=7.0 here, 40.0 "
                     r"there\. Use a new workdir"):
    resume_guard.check_unchanged(config, saved, ("mesh",), "old")


def test_a_run_resumes_under_a_longer_schedule_and_a_protocol_only_under_more_runs():
  config = config_lib.finetune("classification", "tiny")
  saved = config.to_dict()
  config.total_steps, config.mesh.data, config.log_every = 80, 2, 3  # schedule and execution
  resume_guard.check_unchanged(config, saved, resume_guard.RUN_RESUMABLE, "run")
  with pytest.raises(config_lib.ConfigError, match="total_steps=80 here, 40 there"):
    resume_guard.check_unchanged(config, saved, resume_guard.PROTOCOL_RESUMABLE, "protocol")
  config.total_steps = 40
  config.protocol.update(fractions=(0.5, 1.0), compare_random=True, repeats=3)
  resume_guard.check_unchanged(config, saved, resume_guard.PROTOCOL_RESUMABLE, "protocol")
  config.optim.lr = 0.5  # the recipe: neither may change it
  for may_change in (resume_guard.RUN_RESUMABLE, resume_guard.PROTOCOL_RESUMABLE):
    with pytest.raises(config_lib.ConfigError, match="optim.lr=0.5 here"):
      resume_guard.check_unchanged(config, saved, may_change, "old")


def test_a_workdir_resumes_when_its_data_is_reached_by_another_path(tmp_path):
  """A symbolic link (or mount point) to the same folder is the same data; another folder, or
  a path that no longer exists, is not."""
  data, other = tmp_path / "data", tmp_path / "other"
  data.mkdir()
  other.mkdir()
  (tmp_path / "link").symlink_to(data)
  config = config_lib.finetune("classification", "tiny")
  config.data.csv = str(data)
  saved = config.to_dict()
  config.data.csv = str(tmp_path / "link")
  resume_guard.check_unchanged(config, saved, resume_guard.RUN_RESUMABLE, "old")
  for elsewhere in (other, tmp_path / "gone"):
    config.data.csv = str(elsewhere)
    with pytest.raises(config_lib.ConfigError, match=f"data.csv='{elsewhere}' here"):
      resume_guard.check_unchanged(config, saved, resume_guard.RUN_RESUMABLE, "old")


def test_an_older_pretraining_with_every_methods_settings_resumes():
  """Pretraining configs carried every method's settings until each method held its own: such
  a workdir resumes, since settings the schema no longer holds decide nothing."""
  config = methods.pretrain_config("mae", variant="tiny")
  saved = {**config.to_dict(), "simclr": {"temperature": 0.2}, "views": {"contrast": 0.4}}
  resume_guard.check_unchanged(config, saved, resume_guard.RUN_RESUMABLE, "old")
  saved["mae"] = {**saved["mae"], "mask_ratio": 0.5}
  with pytest.raises(config_lib.ConfigError, match="mae.mask_ratio=0.75 here, 0.5 there"):
    resume_guard.check_unchanged(config, saved, resume_guard.RUN_RESUMABLE, "old")


def config_files() -> list[tuple[str, str]]:
  """(file, variant) of every config file in configs/ and each variant it documents."""
  found = []
  for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
    doc = open(path).read()
    variants = sorted(set(re.findall(r"`(?::)?(sample|cpu|tiny)`", doc)))
    found += [(os.path.basename(path), v) for v in ["", *variants]]
  return found


@pytest.mark.parametrize("path,variant", config_files())
def test_every_config_file_starts_with_its_command_and_validates(path, variant, tmp_path):
  text = open(os.path.join(ROOT, "configs", path)).read()
  assert text.startswith(f'r"""python -m vismae_jax.main --config=configs/{path} ')
  config = load_config(path, variant)
  if "finetune" in config:
    config.data.csv = str(tmp_path)  # a folder: volumes read a Decathlon folder
    if not config_lib.volumetric(config):
      config.data.csv = str(tmp_path / "labels.csv")
      (tmp_path / "labels.csv").write_text("image,label\na.png,0\n")
  elif config.data.source != "sample":
    config.data.path = "/data/shards"
  config_checks.validate(config, device_count=1, process_count=1)


def test_an_unknown_variant_is_one_line_naming_the_known_ones(capsys, monkeypatch):
  argv = ["main", "--config=configs/generic.py:bogus", "--workdir=/tmp/unused"]
  monkeypatch.chdir(ROOT)
  with pytest.raises(SystemExit) as exit_info:
    main.parse_flags(argv)
  assert exit_info.value.code == 1
  assert capsys.readouterr().err.strip() == (
      "error: config: unknown config variant 'bogus'; known: sample, tiny")


def test_few_shot_settings_are_checked_and_may_be_added_to_a_protocol():
  config = config_lib.finetune("classification", "tiny")
  config.protocol.update(shots=(5, 0, 5), shot_draws=0)
  with pytest.raises(config_lib.ConfigError) as info:
    config_checks.validate(config, device_count=1, process_count=1)
  assert ("config.protocol.shots=(5, 0, 5): numbers of labelled training cases must be positive "
          "integers, each once") in str(info.value)
  assert "config.protocol.shot_draws=0: need at least 1 draw" in str(info.value)
  saved = config_lib.finetune("classification", "tiny").to_dict()
  del saved["protocol"]["shots"], saved["protocol"]["shot_draws"]  # a protocol from before them
  resume_guard.check_unchanged(config, saved, resume_guard.PROTOCOL_RESUMABLE, "old")


@pytest.mark.slow
def test_cli_fails_before_any_work(tmp_path):
  workdir = tmp_path / "run"
  proc = run_main(str(workdir), "--config.input.image_size=100", check=False)
  assert proc.returncode == 1
  assert "config.input.image_size=100" in proc.stderr
  assert not workdir.exists()  # nothing written, no data touched
  proc = run_main(str(workdir), "--config.optim.lr_typo=1", check=False)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert "the config has no setting 'lr_typo'" in proc.stderr
  proc = run_main(str(workdir), config="configs/generic.py", check=False)
  assert proc.returncode == 1 and "config.data.path is empty" in proc.stderr
  assert not os.path.exists(workdir)
