"""Fixtures; shared helpers are in helpers.py.

In-process tests see 2 CPU devices, so that sharding is tested without a subprocess (the
slow tier's subprocesses take 8).
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=2")

import jax  # noqa: E402
import pytest  # noqa: E402

import helpers  # noqa: E402

# In-process runs share compiled executables with each other and with the CLI tests.
jax.config.update("jax_compilation_cache_dir", helpers.CACHE)


@pytest.fixture(autouse=True)
def _data_marker(request):
  """Tells helpers.shared_dataset whether the running test declared that it reads the real
  datasets (@pytest.mark.data); such a test skips, saying why, where they are absent."""
  marked = request.node.get_closest_marker("data") is not None
  if marked and not os.path.isdir(helpers.SHARED_DATASETS):
    pytest.skip(f"{helpers.SHARED_DATASETS} is absent: the real datasets live beside the "
                "project checkout")
  helpers.RUNNING_DATA_TEST[0] = marked
  yield
  helpers.RUNNING_DATA_TEST[0] = False


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory):
  """A tiny SwinMAE pretrained on the bundled sample through the CLI (the tiny fine-tuning
  models' widths)."""
  workdir = str(tmp_path_factory.mktemp("tiny_pretrained"))
  helpers.run_main(workdir)
  return workdir


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
  """The bundled sample as shards, written once per test session."""
  from data_pipelines import sample
  return sample.write_sample_shards(str(tmp_path_factory.mktemp("sample_shards")))


@pytest.fixture(scope="session")
def sample_segmentation_csv(tmp_path_factory):
  """A labelled segmentation set from the bundled ultrasound images: one mask per image, a
  bright box on two of every three (the third has nothing to find), patients in pairs."""
  import csv

  import numpy as np
  from PIL import Image

  from data_pipelines import sample
  folder = tmp_path_factory.mktemp("sample_segmentation")
  names = sorted(n for n in os.listdir(os.path.join(sample.SAMPLE_DIR, "us"))
                 if n.endswith(".png"))[:48]
  with open(folder / "labels.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["image", "mask", "patient_key"])
    for i, name in enumerate(names):
      image = os.path.join(sample.SAMPLE_DIR, "us", name)
      with Image.open(image) as img:
        mask = np.zeros((img.height, img.width), np.uint8)
      if i % 3:
        mask[img.height // 4:img.height // 2, img.width // 3:2 * img.width // 3] = 255
      Image.fromarray(mask).save(folder / f"mask_{i}.png")
      writer.writerow([image, f"mask_{i}.png", f"patient{i // 2}"])
  return str(folder / "labels.csv")
