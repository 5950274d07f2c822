"""Applying a fine-tuned model: masks at each input's own size, probabilities per input, TTA,
DICOM in without PHI out, unreadable inputs listed, checkpoints that do not fit refused."""
import csv
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from helpers import get_testdata_file, need, picture, plausible_params, run_main
from vismae_jax import config_lib, inference, parallel, predict
from vismae_jax.convert import torch_import, torch_names
from vismae_jax.train import finetune



def weights_file(folder, config, zero=False) -> str:
  """A fine-tuned model of `config` as a PyTorch file (plausible random weights, or all zero:
  a model whose output does not depend on its input)."""
  safetensors_numpy = need("safetensors.numpy")
  params = plausible_params(finetune.build_model(config), config.input.image_size)
  if zero:
    params = jax.tree.map(np.zeros_like, params)
  path = str(folder / ("zero.safetensors" if zero else "model.safetensors"))
  safetensors_numpy.save_file(torch_names.to_torch(params), path)
  return path


def configured(kind, folder, inputs, **predict_options):
  config = config_lib.finetune(kind, "tiny")
  config.task = "predict"
  config.predict.update(input=str(inputs), output=str(folder / "out"), **predict_options)
  config.finetune.pretrained = weights_file(folder, config)
  return config


def boxes(folder, shapes):
  """Non-square PNGs, each with a bright box at a known place; returns {name: box mask}."""
  os.makedirs(folder, exist_ok=True)
  truth = {}
  for k, (h, w) in enumerate(shapes):
    image = np.full((h, w), 20, np.uint8)
    image[h // 5:h // 2, w // 3:3 * w // 4] = 230
    Image.fromarray(image).save(folder / f"case_{k}.png")
    truth[f"case_{k}.png"] = image > 128
  return truth


def test_masks_come_back_at_each_inputs_size_where_the_object_is(tmp_path):
  """The way back from the letterboxed model input: a prediction that marks the bright box in
  the letterboxed image lands on the box in the original image, whatever its shape."""
  shapes = [(120, 360), (360, 120), (257, 131), (64, 64)]
  truth = boxes(tmp_path / "inputs", shapes)
  config = config_lib.finetune("segmentation", "tiny")
  config.predict.output = str(tmp_path / "out")
  writer = predict.MaskWriter(config, config.predict.output)
  for name, mask in truth.items():
    frames = predict.read_input(name, str(tmp_path / "inputs" / name))
    boxed = predict.readers.letterbox(frames[0], config.input.image_size)
    probabilities = np.stack([boxed <= 128, boxed > 128], -1)[None].astype(np.float32)
    writer.add(name, str(tmp_path / "inputs" / name), frames, probabilities)
  writer.close([])
  for name, mask in truth.items():
    written = np.asarray(Image.open(tmp_path / "out" / name)) > 0
    assert written.shape == mask.shape
    assert (written & mask).sum() / (written | mask).sum() > 0.85, name


def test_a_folder_is_predicted_into_masks_and_probabilities_with_unreadable_inputs_listed(
    tmp_path):
  boxes(tmp_path / "inputs", [(90, 200), (200, 90)])
  (tmp_path / "inputs" / "broken.png").write_bytes(b"not an image")
  config = configured("segmentation", tmp_path, tmp_path / "inputs", probabilities=True)
  paths = predict.run(config, "", parallel.make_mesh(config.mesh))
  assert np.asarray(Image.open(tmp_path / "out" / "case_0.png")).shape == (90, 200)
  probabilities = np.load(tmp_path / "out" / "case_1_probabilities.npy")
  assert probabilities.shape == (200, 90, 2) and probabilities.dtype == np.float16
  np.testing.assert_allclose(probabilities.astype(np.float32).sum(-1), 1.0, atol=1e-2)
  with open(paths["errors"]) as f:
    errors = list(csv.DictReader(f))
  assert [e["input"] for e in errors] == ["broken.png"] and errors[0]["reason"]
  drawn = picture(paths["overlays"])  # every input's predicted box outlined in red
  assert drawn["red"] > 1e-3 and drawn["lime"] == 0 and drawn["grey_std"] > 10


def test_classification_writes_one_row_per_input_in_order(tmp_path):
  boxes(tmp_path / "inputs", [(64, 80), (80, 64), (50, 50)])
  rows = "image\n" + "".join(f"inputs/case_{k}.png\n" for k in (2, 0, 1))
  (tmp_path / "list.csv").write_text(rows)
  config = configured("classification", tmp_path, tmp_path / "list.csv")
  paths = predict.run(config, "", parallel.make_mesh(config.mesh))
  with open(paths["predictions"]) as f:
    table = list(csv.DictReader(f))
  assert [r["input"] for r in table] == ["inputs/case_2.png", "inputs/case_0.png",
                                         "inputs/case_1.png"]
  for r in table:
    probabilities = [float(r[f"probability_{c}"]) for c in range(2)]
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    assert r["prediction"] == str(int(np.argmax(probabilities)))


def test_tta_changes_nothing_for_a_flip_invariant_model_and_something_for_others(tmp_path):
  config = config_lib.finetune("segmentation", "tiny")
  images = np.random.default_rng(0).integers(0, 255, (2, 64, 64), np.uint8)
  mesh = parallel.make_mesh(config.mesh)

  def probabilities(tta, zero):
    config.predict.tta = tta
    params = plausible_params(finetune.build_model(config), 64)
    if zero:  # every kernel and bias zero: the same output wherever the input is flipped
      params = jax.tree.map(np.zeros_like, params)
    return inference.predict_all(finetune.functions(config).predict, params, images, 2, mesh)
  np.testing.assert_allclose(probabilities(True, True), probabilities(False, True), atol=1e-6)
  assert np.abs(probabilities(True, False) - probabilities(False, False)).max() > 1e-4


PHI_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
            "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "InstitutionName")


def test_dicom_in_nifti_out_on_the_dicom_grid_and_no_phi_in_any_output(tmp_path):
  nibabel = need("nibabel")
  pydicom = need("pydicom")
  import nibabel
  os.makedirs(tmp_path / "inputs")
  values = set()
  for name in ("CT_small.dcm", "examples_ybr_color.dcm"):  # one frame; 30 frames
    shutil.copy(get_testdata_file(name), tmp_path / "inputs" / name)
    ds = pydicom.dcmread(get_testdata_file(name))
    values |= {str(ds.get(k, "")) for k in PHI_KEYS}
  values = {v for v in values if len(v) >= 4}
  assert "CompressedSamples^CT1" in values
  config = configured("segmentation", tmp_path, tmp_path / "inputs", probabilities=True)
  predict.run(config, "", parallel.make_mesh(config.mesh))
  ct = nibabel.load(tmp_path / "out" / "CT_small.nii.gz")
  assert ct.shape == (128, 128, 1)  # (columns, rows, frames) of the DICOM's pixel grid
  np.testing.assert_allclose(np.abs(np.diag(ct.affine))[:2], 0.661468, rtol=1e-5)  # spacing
  assert nibabel.load(tmp_path / "out" / "examples_ybr_color.nii.gz").shape == (320, 240, 30)
  blob = b"".join(open(os.path.join(d, f), "rb").read()
                  for d, _, files in os.walk(tmp_path / "out") for f in files)
  leaked = [v for v in values if v.encode() in blob or v.replace("^", " ").encode() in blob]
  assert not leaked, leaked


def test_a_checkpoint_of_another_model_is_refused_before_any_prediction(tmp_path):
  boxes(tmp_path / "inputs", [(64, 64)])
  config = configured("segmentation", tmp_path, tmp_path / "inputs")
  config.model.embed_dim, config.model.num_heads = 32, (1, 2, 2, 4)
  with pytest.raises(torch_import.CheckpointMismatch,
                     match=r"mis-shaped: patch_embed.proj.weight: file \(16, 1, 4, 4\) vs model "
                           r"\(32, 1, 4, 4\)"):
    predict.run(config, "", parallel.make_mesh(config.mesh))
  assert not os.path.exists(tmp_path / "out")


@pytest.mark.slow
def test_the_command_line_predicts_from_a_run_and_names_a_protocol_as_no_run(
    tmp_path, sample_segmentation_csv):
  protocol_dir = str(tmp_path / "protocol")
  run_main(protocol_dir, f"--config.data.csv={sample_segmentation_csv}",
           "--config.protocol.max_folds=1", "--config.total_steps=4",
           config="configs/finetune_seg.py:tiny")
  boxes(tmp_path / "inputs", [(80, 120)])
  args = ("--config.task=predict", f"--config.predict.input={tmp_path / 'inputs'}",
          f"--config.predict.output={tmp_path / 'out'}")
  proc = run_main(os.path.join(protocol_dir, "runs", "random_labels100_fold0"), *args,
                  config="configs/finetune_seg.py:tiny")
  assert "Predicted 1 of 1 inputs" in proc.stdout
  assert np.asarray(Image.open(tmp_path / "out" / "case_0.png")).shape == (80, 120)
  refused = run_main(protocol_dir, *args, config="configs/finetune_seg.py:tiny", check=False)
  assert refused.returncode == 1 and "name one run of a protocol" in refused.stderr
