"""What several test modules share: the CLI in a subprocess, the reference listings, the real
datasets beside the checkout, random parameters of full-size models, a synthetic Decathlon
folder of volumes."""
import concurrent.futures
import functools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(ROOT, "tests", "reference")
SHARED_DATASETS = os.path.join(os.path.dirname(ROOT), "shared", "datasets")
# Runs of the same program in different tests share compiled executables.
CACHE = os.path.join(tempfile.gettempdir(), "vismae_jax_test_compile_cache")


def main_command(workdir, *overrides, config="configs/generic.py:tiny"):
  return [sys.executable, "-m", "vismae_jax.main", f"--config={config}", f"--workdir={workdir}",
          *overrides]


def main_env(devices: int = 1):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=CACHE,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env.pop("JAX_COORDINATOR_ADDRESS", None)
  return env


def run_main(workdir, *overrides, devices=1, config="configs/generic.py:tiny", check=True,
             timeout=600, cache=True):
  """Runs `python -m vismae_jax.main` to completion; returns the CompletedProcess.

  cache=False compiles everything afresh, so that the compiler's warnings are in its stderr.
  """
  env = dict(main_env(devices), **({} if cache else {"JAX_ENABLE_COMPILATION_CACHE": "false"}))
  proc = subprocess.run(main_command(workdir, *overrides, config=config), cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"main failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


def in_parallel(function, items) -> list:
  """function(item) for every item, one per CPU core at a time: for subprocesses, which
  spend most of their time starting up."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
    return list(pool.map(function, items))


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


# Whether the running test is marked `data` (conftest.py sets it): shared_dataset refuses
# unmarked tests, so that `-m "not data"` leaves out every test that needs ../shared.
RUNNING_DATA_TEST = [False]


# The optional extras the tests' modules come from, for the reason of a skip.
EXTRAS = {"pydicom": "[ingest] and [test]", "pydicom.data": "[ingest] and [test]",
          "nibabel": "[ingest]", "safetensors.numpy": "[torch]", "torch": "[torch]",
          "monai": "[monai]"}


def need(module: str):
  """An optional extra's module, or a skip of the one test that needs it, naming the extra (a
  module-level skip would drop the file's other tests with it)."""
  return pytest.importorskip(module, reason=f"needs the {EXTRAS[module]} extra")


def get_testdata_file(name: str) -> str:
  """A real DICOM file of pydicom-data (the [test] extra), or a skip saying so."""
  return need("pydicom.data").get_testdata_file(name)


def picture(path: str) -> dict:
  """What a written figure shows, by pixel: its size, the spread of its grey levels (a blank or
  one-colour image has none), and the share of pixels drawn in the overlays' red (predictions)
  and lime (ground truth) outlines."""
  from PIL import Image
  rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  return {"width": rgb.shape[1], "height": rgb.shape[0], "grey_std": float(rgb.mean(-1).std()),
          "red": float(np.mean((r > 180) & (g < 80) & (b < 80))),
          "lime": float(np.mean((g > 180) & (r < 80) & (b < 80)))}


def shared_dataset(name: str) -> str:
  """A real dataset from ../shared/datasets, or a skip saying why (a user's clone has none)."""
  assert RUNNING_DATA_TEST[0], "a test that reads ../shared/datasets is marked @pytest.mark.data"
  path = os.path.join(SHARED_DATASETS, name)
  if not os.path.exists(os.path.join(path, "labels.csv")):
    pytest.skip(f"{path} is absent: the real {name} images live beside the project checkout")
  return path


def load_config(path, arg=""):
  """configs/<path>'s get_config(arg), as `--config=configs/<path>:<arg>` loads it."""
  spec = importlib.util.spec_from_file_location("config", os.path.join(ROOT, "configs", path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def read_listing(name):
  """{torch name: (shape, dtype)} of tests/reference/<name>: the published tensors."""
  listing = {}
  with open(os.path.join(REFERENCE, name)) as f:
    for line in f:
      if not line.startswith("#"):
        key, shape, dtype = line.rstrip("\n").split("\t")
        listing[key] = (tuple(int(d) for d in shape.strip("()").split(",") if d.strip()),
                        dtype.replace("torch.", ""))
  return listing


def read_transfer_listing(name):
  """{section: [names]} of tests/reference/transfer_*.txt: what the release's transfer loads."""
  sections, current = {}, None
  with open(os.path.join(REFERENCE, name)) as f:
    for line in f:
      line = line.strip()
      if line.startswith("## "):
        current = sections.setdefault(line[3:], [])
      elif line and not line.startswith("#"):
        current.append(line)
  return sections


def model_inputs(model, image_size):
  """Dummy inputs for `model.init`: images, and a token mask for a SwinMAE."""
  inputs = (jnp.zeros((1, image_size, image_size, model.in_chans)),)
  if hasattr(model, "decoder_depths"):
    grid = image_size // model.patch_size
    inputs += (jnp.zeros((1, grid, grid), bool),)
  return inputs


def param_shapes(model, *inputs):
  """The shapes of `model.init(key, *inputs)`'s parameters, without compiling it."""
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), *inputs)["params"]


def random_values(shapes, seed=0):
  """Standard normal values in the given parameter shapes."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)


def plausible_values(shapes, seed=2, spread=0.02):
  """Values of an initialised model's scale in the given parameter shapes: kernels with
  variance 1 / fan-in, norm scales near 1, and no tensor at zero, so that every tensor's
  layout matters (zero biases and tables would hide a transposition); `spread` is the other
  tensors' standard deviation. Drawn by numpy: jax.random would compile once per shape."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    noise = rng.standard_normal(leaf.shape).astype(leaf.dtype)
    name = path[-1].key
    if name == "kernel":
      return noise / np.sqrt(np.prod(leaf.shape[:-1]))
    return 1.0 + spread * noise if name == "scale" else spread * noise
  return jax.tree_util.tree_map_with_path(fill, shapes)


@functools.cache
def random_params(model, image_size, seed=0):
  """Random values in the model's parameter shapes (no compiled init: full-size models)."""
  return random_values(param_shapes(model, *model_inputs(model, image_size)), seed)


def plausible_params(model, image_size, seed=2):
  """`plausible_values` in the model's parameter shapes, without compiling its init."""
  return plausible_values(param_shapes(model, *model_inputs(model, image_size)), seed)


def write_csv_with_bad_rows(folder) -> str:
  """A segmentation CSV in `folder` whose rows 2 and 7 are good; the rest name a missing
  image, a truncated PNG, a text file and a mask of another size than its image."""
  from PIL import Image

  def png(name, array):
    Image.fromarray(np.asarray(array, np.uint8)).save(folder / name)
  png("good.png", np.random.default_rng(0).integers(0, 256, (48, 40)))
  png("good_mask.png", np.pad(np.full((8, 8), 255), ((20, 20), (16, 16))))
  png("wide_mask.png", np.zeros((48, 41)))
  with open(folder / "good.png", "rb") as f:
    (folder / "truncated.png").write_bytes(f.read()[:1000])  # of ~2 KB of noise
  (folder / "text.png").write_text("not an image")
  (folder / "labels.csv").write_text(
      "image,mask\ngood.png,good_mask.png\nmissing.png,good_mask.png\ntruncated.png,good_mask.png\n"
      "text.png,good_mask.png\ngood.png,wide_mask.png\ngood.png,good_mask.png\n")
  return str(folder / "labels.csv")


def assert_export_loads_and_fills_the_unet(export_dir):
  """A :tiny SwinMAE exported to `export_dir`: its model.pth loads strictly into our PyTorch
  SwinMAE, and model.safetensors fills the tiny Swin-UNet with the same tensors."""
  import jax
  import numpy as np
  import torch

  from vismae_jax.convert import torch_models, torch_names
  from vismae_jax.train import finetune

  model = torch_models.SwinMAE(image_size=64, in_chans=1, embed_dim=16, depths=(2, 1, 1, 1),
                               decoder_depths=(1, 1, 1), num_heads=(1, 1, 2, 2), window=4)
  model.load_state_dict(torch.load(os.path.join(export_dir, "model.pth"),
                                   weights_only=True)["model"], strict=True)
  config = load_config("finetune_seg.py", "tiny")
  config.finetune.pretrained = os.path.join(export_dir, "model.safetensors")
  seg = finetune.build_model(config)
  target = jax.device_get(finetune.init_params(seg, config, jax.random.PRNGKey(0)))
  params = finetune.pretrained_params(config, target)
  np.testing.assert_array_equal(
      torch_names.to_torch(params)["layers.0.blocks.0.attn.qkv.weight"],
      model.state_dict()["layers.0.blocks.0.attn.qkv.weight"].numpy())


def pretraining_param_shapes(config):
  """The parameter shapes of a pretraining config's model (its method's init, traced only)."""
  from vismae_jax.train import methods, pretrain
  model = pretrain.build_model(config)
  return jax.eval_shape(lambda: methods.get(config.method).task_fields(model, config)[
      "init_params"](jax.random.PRNGKey(0)))


def assert_encoder_is_swinmaes(params):
  """The pretraining model's `patch_embed` and `encoder` have SwinMAE's names (configs/generic.py
  :tiny), what lets its checkpoint transfer into the fine-tuning models."""
  import flax
  mae_params = pretraining_param_shapes(load_config("generic.py", "tiny"))
  names = lambda tree: set(flax.traverse_util.flatten_dict(tree, sep="/"))
  assert {k: names(params[k]) for k in ("patch_embed", "encoder")} == {
      k: names(mae_params[k]) for k in ("patch_embed", "encoder")}


def assert_encoder_export_transfers(workdir, config):
  """Exports the pretraining run in `workdir` (its `config`, e.g. configs/simmim.py:tiny) and
  checks that the export holds the encoder alone (the run's patch_embed, layers.* and norm),
  which fills every encoder tensor of the Swin-UNet and, with `norm`, the classifier's: the
  Swin-UNet from the workdir, the classifier from the exported file."""
  import safetensors

  from vismae_jax import checkpoint
  from vismae_jax.convert import torch_names, transfer
  from vismae_jax.train import finetune

  def encoder_names(state):
    return sorted(n for n in state if n.startswith(("patch_embed.", "layers.")))

  proc = run_main(workdir, "--config.task=export", config=config)
  assert "Exported swin_encoder (the encoder alone" in proc.stdout
  path = f"{workdir}/export/model.safetensors"
  with safetensors.safe_open(path, "np") as f:
    assert f.metadata()["model"] == "swin_encoder"
    exported = {k: f.get_tensor(k) for k in f.keys()}
  state = torch_names.to_torch(checkpoint.load_params(workdir), image_size=64)
  assert sorted(exported) == sorted(encoder_names(state) + ["norm.bias", "norm.weight"])
  for name, value in exported.items():
    np.testing.assert_array_equal(value, state[name])

  for kind, source, norm in (("seg", workdir, []), ("cls", path, ["norm.bias", "norm.weight"])):
    finetune_config = load_config(f"finetune_{kind}.py", "tiny")
    finetune_config.finetune.pretrained = source
    model = finetune.build_model(finetune_config)
    shapes = jax.eval_shape(lambda rng: finetune.init_params(model, finetune_config, rng),
                            jax.random.PRNGKey(0))
    target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    params = finetune.pretrained_params(finetune_config, target)
    loaded = torch_names.to_torch(params)
    wanted = encoder_names(loaded) + norm
    for name in wanted:
      np.testing.assert_array_equal(loaded[name], state[name], err_msg=name)
    _, report = transfer.transfer(
        checkpoint.load_params(source) if source == workdir else exported, target)
    assert sorted(report.loaded) == sorted(wanted), kind
    assert report.new and all(not n.startswith(("patch_embed.", "layers.")) for n in report.new)


def synthetic_decathlon(folder, cases: int = 8) -> str:
  """A Decathlon folder of small MR volumes in odd orientations and spacings: two labelled
  ellipsoids (classes 1 and 2) brighter than a noisy background."""
  nibabel = pytest.importorskip("nibabel")  # the [ingest] extra
  rng = np.random.default_rng(0)
  os.makedirs(os.path.join(folder, "imagesTr"))
  os.makedirs(os.path.join(folder, "labelsTr"))
  training = []
  for i in range(cases):
    shape = (28 + i % 3 * 4, 40 + i % 2 * 8, 26 + i % 4 * 3)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    label = np.zeros(shape, np.uint8)
    for c, centre in ((1, (0.35, 0.4, 0.5)), (2, (0.65, 0.6, 0.5))):
      radius = np.array([5.0, 7.0, 5.0]) * rng.uniform(0.8, 1.2)
      inside = ((grid - np.array(centre) * shape) / radius) ** 2
      label[inside.sum(-1) <= 1] = c
    image = (100 + 60 * label + rng.normal(0, 15, shape)).astype(np.float32)
    affine = np.diag([-1.0, -1.0, 1.2 if i % 2 else 1.0, 1.0])  # LPS-stored, some anisotropic
    name = f"case_{i:03d}.nii.gz"
    for sub, array in (("imagesTr", image), ("labelsTr", label)):
      nibabel.save(nibabel.Nifti1Image(array, affine), os.path.join(folder, sub, name))
    training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
  with open(os.path.join(folder, "dataset.json"), "w") as f:
    json.dump({"name": "synthetic", "modality": {"0": "MRI"},
               "labels": {"0": "background", "1": "first", "2": "second"},
               "training": training}, f)
  return str(folder)


def losses(workdir):
  return np.array([m["loss"] for m in read_metrics(workdir)])


def final_params(workdir, step):
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(path)["params"]


def train_in_process(sample_dir, workdir):
  """The tiny pretraining on the sample's shards in this process, over its devices."""
  from vismae_jax import parallel
  from vismae_jax.train import loop, pretrain
  config = load_config("generic.py", "tiny")
  config.data.source, config.data.path = "shards", sample_dir
  mesh = parallel.make_mesh(config.mesh)
  return loop.train(pretrain.make_task(config, workdir, mesh), config, workdir, mesh)
