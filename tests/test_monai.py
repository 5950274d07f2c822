"""MONAI interchange (convert/monai.py) against MONAI itself, the real client: our SwinUNETR,
UNETR and ViT load into MONAI's classes with strict=True and give our outputs within 1e-4, and
MONAI's weights, in each layout users have, fill our models."""
import jax
import numpy as np
import pytest

from helpers import need, param_shapes, plausible_values
from vismae_jax.convert import monai as interchange
from vismae_jax.models import swin_unetr, unetr, vit


def _monai_net(spec):
  nets = need("monai").networks.nets
  return getattr(nets, spec["class"])(**spec["kwargs"]).eval()


def _torch_output(net, x):
  torch = need("torch")
  with torch.no_grad():
    out = net(torch.from_numpy(np.moveaxis(np.array(x), -1, 1)))
  out = out[0] if isinstance(out, tuple) else out
  return np.moveaxis(out.numpy(), 1, -1)


def _load(net, state):
  torch = need("torch")
  net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)


def _random_params(model, x):
  """Parameters of `model` with every tensor random, norms included (an identity norm would
  hide a misplaced scale): kernels at 1/sqrt(fan-in), norm scales about 1, the rest about 0.1.
  Drawn from the shapes alone: initialising the model op by op takes far longer."""
  return plausible_values(param_shapes(model, x), seed=0, spread=0.1)


SWIN_CASES = {
    # 3D, MONAI's defaults but narrower: windows clamped on the deeper (4 x 8 x 4) maps.
    "3d": dict(shape=(1, 32, 64, 32, 1), merge_order="merging", conv_blocks=False),
    # v2's convolutions before each stage end in instance norms, which a map of a few voxels
    # leaves ill-conditioned (rounding differences grow past 1e-4): maps of 2 x 4 x 4 at 1/16.
    "3d_v2_mergingv2": dict(shape=(1, 32, 64, 64, 1), merge_order="mergingv2",
                            conv_blocks=True),
    "2d": dict(shape=(2, 64, 96, 1), merge_order="merging", conv_blocks=False),
}


def _swin_unetr(case):
  c = SWIN_CASES[case]
  model = swin_unetr.SwinUNETR(embed_dim=12, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
                               num_classes=3, merge_order=c["merge_order"],
                               conv_blocks=c["conv_blocks"])
  x = jax.random.normal(jax.random.PRNGKey(2), c["shape"])
  spec = {"class": "SwinUNETR", "kwargs": dict(
      in_channels=1, out_channels=3, patch_size=2, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4],
      window_size=7, feature_size=12, spatial_dims=len(c["shape"]) - 2,
      downsample=c["merge_order"], use_v2=c["conv_blocks"])}
  return model, x, spec


@pytest.mark.parametrize("case", list(SWIN_CASES))
def test_swin_unetr_loads_strictly_into_monai_with_equal_outputs(case):
  model, x, spec = _swin_unetr(case)
  params = _random_params(model, x)
  net = _monai_net(spec)
  _load(net, interchange.state_dict(params, interchange.SWIN_UNETR, spec))
  ours = np.asarray(jax.jit(model.apply)({"params": params}, x))
  np.testing.assert_allclose(_torch_output(net, x), ours, atol=1e-4, rtol=1e-4)
  assert np.abs(ours).max() > 0.1  # not an all-zero output that would match anything


def _spec(cls, **kwargs):
  return {"class": cls, "patch_size": kwargs.pop("_patch", 16), "kwargs": kwargs}


def test_unetr_loads_strictly_into_monai_with_equal_outputs():
  """MONAI's UNETR: 12 blocks, patches of 16, taps after blocks 4, 7 and 10."""
  model = unetr.UNETR(patch_size=16, embed_dim=48, depth=12, num_heads=2, feature_size=8,
                      num_classes=3)
  x = jax.random.normal(jax.random.PRNGKey(2), (1, 32, 32, 48, 1))
  params = _random_params(model, x)
  spec = _spec("UNETR", in_channels=1, out_channels=3, img_size=[32, 32, 48], feature_size=8,
               hidden_size=48, mlp_dim=192, num_heads=2, spatial_dims=3, qkv_bias=True)
  net = _monai_net(spec)
  _load(net, interchange.state_dict(params, interchange.UNETR, spec))
  ours = np.asarray(jax.jit(model.apply)({"params": params}, x))
  np.testing.assert_allclose(_torch_output(net, x), ours, atol=1e-4, rtol=1e-4)


def test_vit_encoder_exports_as_monais_vit_with_equal_outputs():
  """A ViT of any depth and patch (here the hippocampus variant's: 4 blocks, patches of 8)."""
  model = vit.ViTEncoder(patch_size=8, embed_dim=48, depth=4, num_heads=4)
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 32, 48, 32, 1))
  params = {"encoder": _random_params(model, x)}
  spec = _spec("ViT", _patch=8, in_channels=1, img_size=[32, 48, 32], patch_size=8,
               hidden_size=48, mlp_dim=192, num_layers=4, num_heads=4, spatial_dims=3,
               qkv_bias=True)
  net = _monai_net(spec)
  _load(net, interchange.state_dict(params, interchange.VIT, spec))
  ours, _ = model.apply({"params": params["encoder"]}, x)
  torch = need("torch")
  with torch.no_grad():
    theirs, _ = net(torch.from_numpy(np.moveaxis(np.array(x), -1, 1)))
  np.testing.assert_allclose(theirs.numpy(), np.asarray(ours), atol=1e-4, rtol=1e-4)


def _monai_swin_unetr_state(window=7):
  """A SwinUNETR state dict as MONAI itself initialises it."""
  torch = need("torch")
  torch.manual_seed(0)
  _, _, spec = _swin_unetr("3d")
  spec["kwargs"]["window_size"] = window
  return {k: v.numpy() for k, v in _monai_net(spec).state_dict().items()}, spec


def test_a_whole_monai_swin_unetr_imports_with_equal_outputs():
  state, spec = _monai_swin_unetr_state()
  model, x, _ = _swin_unetr("3d")
  like = jax.eval_shape(model.init, jax.random.PRNGKey(5), x)["params"]
  params, report = interchange.import_weights(state, like)
  assert not report.new and not report.unused
  net = _monai_net(spec)
  _load(net, state)
  np.testing.assert_allclose(np.asarray(jax.jit(model.apply)({"params": params}, x)),
                             _torch_output(net, x), atol=1e-4, rtol=1e-4)


def _encoder_only(state, layout):
  """MONAI SwinUNETR encoder weights renamed as each self-supervised layout writes them."""
  encoder = {k[len("swinViT."):]: v for k, v in state.items() if k.startswith("swinViT.")}
  if layout == "ssl":  # MONAI's SSL pretraining: module., bare names, fc1/fc2, {"state_dict"}
    return {"module." + k.replace("mlp.linear", "mlp.fc"): v for k, v in encoder.items()}
  if layout == "swinViT":
    return {"swinViT." + k: v for k, v in encoder.items()}
  return {"module.swin_vit." + k: v for k, v in encoder.items()}


@pytest.mark.parametrize("layout", ["ssl", "swinViT", "module.swin_vit"])
def test_each_monai_encoder_layout_fills_every_encoder_tensor(layout, tmp_path):
  from vismae_jax.convert import weights
  torch = need("torch")
  state, _ = _monai_swin_unetr_state()
  path = str(tmp_path / "ssl.pt")
  torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in
                             _encoder_only(state, layout).items()}}, path)
  model, x, _ = _swin_unetr("3d")
  like = jax.eval_shape(model.init, jax.random.PRNGKey(5), x)["params"]
  params, report = interchange.import_weights(weights.read(path), like, path)
  encoder = [p for p in report.new if p.startswith(("patch_embed", "encoder/"))]
  assert not encoder and not report.unused, (encoder, report.unused)
  assert len(report.loaded) == len([k for k in state if k.startswith("swinViT.")
                                    and not k.endswith("relative_position_index")])
  np.testing.assert_array_equal(
      params["encoder"]["layers_1"]["blocks_1"]["mlp"]["fc1"]["kernel"],
      state["swinViT.layers2.0.blocks.1.mlp.linear1.weight"].T)
  assert all(p.startswith(("encoder1", "encoder2", "encoder3", "encoder4", "encoder10",
                           "decoder", "out")) for p in report.new)


def test_a_monai_checkpoint_of_another_window_fails_naming_the_tensor():
  state, _ = _monai_swin_unetr_state(window=5)
  model, x, _ = _swin_unetr("3d")
  like = jax.eval_shape(model.init, jax.random.PRNGKey(5), x)["params"]
  with pytest.raises(interchange.MonaiError, match=r"^ckpt\.pt: swinViT\.layers1\.0\.blocks\.0"
                     r"\.attn\.relative_position_bias_table has shape \(729, 1\) where .* needs "
                     r"\(2197, 1\)"):
    interchange.import_weights(state, like, "ckpt.pt")


@pytest.mark.slow
def test_swin_unetr_from_a_monai_encoder_fine_tunes_and_exports_back_to_monai(tmp_path):
  """The command line end to end: a MONAI self-supervised encoder (SSL layout: module., bare
  names, fc1/fc2) starts configs/swin_unetr3d.py:tiny on Decathlon volumes, the transfer table
  shows the whole encoder loaded, and the run's export loads into MONAI's SwinUNETR strictly
  (its monai.json) with our outputs."""
  import json
  import os
  import re

  from helpers import load_config, run_main, synthetic_decathlon
  from vismae_jax import checkpoint, tasks
  from vismae_jax.train import finetune
  torch = need("torch")
  config = load_config("swin_unetr3d.py", "tiny")
  spec = {"class": "SwinUNETR", "kwargs": dict(
      in_channels=1, out_channels=3, patch_size=2, depths=[2, 2, 2, 2],
      num_heads=[3, 6, 12, 24], window_size=4, feature_size=12, spatial_dims=3)}
  torch.manual_seed(0)
  state = {k: v.numpy() for k, v in _monai_net(spec).state_dict().items()}
  ssl = str(tmp_path / "model_swinvit.pt")
  torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in
                             _encoder_only(state, "ssl").items()}}, ssl)
  msd = synthetic_decathlon(tmp_path / "msd")
  workdir = str(tmp_path / "swin_unetr")
  proc = run_main(workdir, f"--config.data.csv={msd}", f"--config.finetune.pretrained={ssl}",
                  "--config.finetune.num_classes=3", "--config.protocol.folds=2",
                  "--config.protocol.max_folds=1", "--config.protocol.val_fraction=0.25",
                  "--config.total_steps=20", config="configs/swin_unetr3d.py:tiny")
  encoder = len([k for k in state if k.startswith("swinViT.")
                 and not k.endswith("relative_position_index")])
  table = re.search(r"loaded\s+(\d+)\s+swinViT\.", proc.stderr)
  assert table and int(table.group(1)) == encoder, proc.stderr[-3000:]
  with open(os.path.join(workdir, "report.json")) as f:
    assert 0 <= json.load(f)["by_fraction"]["1.0"]["pretrained"]["mean"] <= 1
  run = os.path.join(workdir, "runs", "pretrained_labels100_fold0")
  proc = run_main(run, "--config.task=export", "--config.finetune.num_classes=3",
                  config="configs/swin_unetr3d.py:tiny")
  assert "Exported MONAI SwinUNETR (downsample=merging;" in proc.stdout
  with open(os.path.join(run, "export", "monai.json")) as f:
    exported = json.load(f)
  net = _monai_net(exported)
  net.load_state_dict(torch.load(os.path.join(run, "export", "monai.pt"), weights_only=True),
                      strict=True)
  config.finetune.num_classes = 3
  params = checkpoint.load_params(run, tasks.of(config).best_metric)
  # MONAI's instance norm refuses a one-voxel map, which 32^3 leaves at 1/32: 32 x 64 x 32.
  assert "one voxel at 1/32" in exported["note"]
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 32, 64, 32, 1))
  ours = finetune.build_model(config).apply({"params": params}, x)
  np.testing.assert_allclose(_torch_output(net, x), np.asarray(ours), atol=1e-4, rtol=1e-4)


def test_a_unetr_that_monais_class_cannot_hold_exports_its_encoder_as_monais_vit():
  """The hippocampus UNETR (4 blocks, patches of 8): MONAI's UNETR is fixed at 12 blocks and
  patches of 16, so the export is the encoder, under a spec that MONAI's ViT loads strictly."""
  from helpers import load_config
  from vismae_jax.train import finetune
  config = load_config("unetr3d.py", "cpu")
  shapes = jax.eval_shape(finetune.functions(config).init_params, jax.random.PRNGKey(0))
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  exported, layout, why = interchange.export_layout(params, config)
  assert layout is interchange.VIT and set(exported) == {"encoder"}
  assert "MONAI's UNETR has 12 blocks and patches of 16, this one 4 blocks" in why
  spec = interchange.spec_of(config, layout)
  assert spec["class"] == "ViT" and spec["kwargs"]["img_size"] == [32, 48, 32]
  _load(_monai_net(spec), interchange.state_dict(exported, layout, spec))


def test_monais_vit_weights_fill_every_unetr_encoder_tensor():
  """A MONAI ViT (bare names, as MONAI's ViT saves them) into the tiny UNETR's encoder."""
  from helpers import load_config
  from vismae_jax.train import finetune
  torch = need("torch")
  config = load_config("unetr3d.py", "tiny")
  m = config.model
  torch.manual_seed(0)
  spec = _spec("ViT", in_channels=1, img_size=list(config.input.roi), patch_size=m.patch_size,
               hidden_size=m.embed_dim, mlp_dim=int(m.embed_dim * m.mlp_ratio),
               num_layers=m.depth, num_heads=m.num_heads, qkv_bias=True)
  state = {k: v.numpy() for k, v in _monai_net(spec).state_dict().items()}
  like = jax.eval_shape(finetune.functions(config).init_params, jax.random.PRNGKey(0))
  params, report = interchange.import_weights(state, like)
  assert not [p for p in report.new if p.startswith("encoder/")] and not report.unused
  np.testing.assert_array_equal(params["encoder"]["blocks_2"]["attn"]["proj"]["kernel"],
                                state["blocks.2.attn.out_proj.weight"].T)
