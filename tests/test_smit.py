"""SMIT pretraining (configs/smit3d.py): the masks keep whole units through patch merging, each
loss is zero or minimal where it must be, the teacher moves only by its moving average and the
centres as specified, the temperature warms up; a short run on volumes learns, replays exactly
on one device what it did on eight, and hands its teacher's encoder to SwinUNETR and to MONAI."""
import json
import os
import shutil

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import load_config, need, read_metrics, run_main, synthetic_decathlon
from vismae_jax import checkpoint, config_checks, config_lib
from vismae_jax.convert import weights
from vismae_jax.models import dino, mae, swin_unetr
from vismae_jax.train import contrastive, distillation, finetune, pretrain, smit


def tiny():
  return load_config("smit3d.py", "tiny")


def crops(count=2, seed=0):
  return np.random.default_rng(seed).normal(size=(count, 32, 32, 32)).astype(np.float32)


def test_the_mask_keeps_whole_units_through_patch_merging():
  """Units of 8 voxels, patches of 2: 4 tokens a side at h0, 2 at h1, one at h2 (the distilled
  level), whose tokens are then wholly masked or wholly seen; h3's span 8 units and mix."""
  config = tiny()
  assert smit.token_level(config) == 2
  hidden = np.asarray(smit.token_masks(config, jax.random.PRNGKey(0), 3))
  assert hidden.shape == (3, 16, 16, 16)
  masked = int(64 - int(64 * (1 - config.mae.mask_ratio)))  # 45 of 64 units: exactly
  for level, grid in enumerate((16, 8, 4)):
    share = np.asarray(distillation.token_weights(hidden, grid))
    assert set(np.unique(share)) == {0.0, 1.0}, level
    np.testing.assert_array_equal(share.sum((1, 2, 3)), [masked * (grid // 4) ** 3] * 3)
  assert not set(np.unique(distillation.token_weights(hidden, 2))) <= {0.0, 1.0}
  model = pretrain.build_model(config)
  params = jax.eval_shape(lambda: smit.init_params(model, config, jax.random.PRNGKey(0)))
  pooled, tokens, pixels = jax.eval_shape(
      lambda p: model.apply({"params": p}, jnp.zeros((3, 32, 32, 32, 1)), hidden), params)
  k = config.smit.head_dims[-1]
  assert pooled.shape == (3, k) and tokens.shape == (3, 4, 4, 4, k)  # one token per unit
  assert pixels.shape == (3, 16, 16, 16, 8)  # 2^3 voxels per patch


def test_each_loss_is_zero_or_minimal_where_it_must_be():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 8, 8, 8, 1)).astype(np.float32)
  hidden = np.zeros((2, 4, 4, 4), bool)
  hidden[:, :2] = True
  exact = mae.patchify(x, 2)
  assert float(mae.masked_l1(exact, x, hidden, 2)) == 0.0
  # What the student predicts where it saw the voxels does not count.
  seen_wrong = np.where(hidden[..., None], exact, exact + 5.0)
  assert float(mae.masked_l1(seen_wrong, x, hidden, 2)) == 0.0
  assert float(mae.masked_l1(exact + 1.0, x, hidden, 2)) == pytest.approx(1.0)
  # Distillation: a student equal to the teacher at one temperature leaves the cross-entropy at
  # the teacher's entropy (KL 0), its minimum, and no gradient.
  logits = rng.normal(size=(2, 3, 4, 4, 4, 5)).astype(np.float32)  # views, batch, 3D grid, K
  center = np.zeros((1, 5), np.float32)
  p = jax.nn.softmax(logits, -1)
  entropy = -(p * jnp.log(p)).sum(-1)
  weight = np.ones(logits.shape[:-1], np.float32)
  token = lambda s: dino.masked_token_loss(logits, s, weight, center, 1.0, 1.0)
  assert float(token(logits)) == pytest.approx(float(entropy.mean()), rel=1e-5)
  assert np.abs(jax.grad(token)(jnp.asarray(logits))).max() < 1e-6
  assert float(token(logits + rng.normal(size=logits.shape))) > float(token(logits))
  pooled = logits[:, :, 0, 0, 0]
  same = np.stack([pooled[0], pooled[0]])  # both views alike: each the other's target
  image = lambda s: dino.distillation_loss(same, s, center, 1.0, 1.0)
  assert float(image(same)) == pytest.approx(float(entropy[0, :, 0, 0, 0].mean()), rel=1e-5)
  assert np.abs(jax.grad(image)(jnp.asarray(same))).max() < 1e-6


def test_the_teacher_moves_only_by_ema_and_the_centres_as_specified():
  config = tiny()
  config.smit.update(momentum=0.9, center_momentum=0.8, teacher_temp_warmup=0.5)
  model = pretrain.build_model(config)
  fields = smit.task_fields(model, config)
  params = jax.jit(fields["init_params"])(jax.random.PRNGKey(0))  # eager init: op by op
  extra = fields["extra"].init(params)
  assert float(extra["teacher_temp"]) == pytest.approx(config.smit.warmup_teacher_temp)
  # The student a few updates on: the teacher still where it started.
  student = jax.jit(lambda p: jax.tree.map(lambda w: w + 0.01 * jnp.sign(w), p))(params)
  batch, rng = crops(), jax.random.PRNGKey(1)
  grads, aux = jax.jit(jax.grad(lambda e: fields["loss_fn"](student, batch, rng, e),
                                has_aux=True))(extra)
  assert not any(np.asarray(g).any() for g in jax.tree.leaves(grads["teacher"]))
  # The batch means are the teacher's own logits on the two whole views.
  views, _ = smit.inputs(config, batch, jax.random.split(rng)[0])
  t_pooled, t_tokens, _ = jax.jit(model.apply)({"params": extra["teacher"]},
                                               contrastive.flat(views))
  np.testing.assert_allclose(aux["centers"]["center"], t_pooled.mean(0, keepdims=True),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(aux["centers"]["token_center"][0], t_tokens.mean((0, 1, 2, 3)),
                             rtol=1e-4, atol=1e-5)
  schedule = {"total_steps": jnp.int32(100)}
  new = fields["extra"].update(extra, student, aux, jnp.int32(0), schedule)
  jax.tree.map(lambda n, t, s: np.testing.assert_allclose(n, 0.9 * t + 0.1 * s, rtol=1e-6,
                                                          atol=1e-7),
               new["teacher"], extra["teacher"], student)
  np.testing.assert_allclose(new["center"], 0.2 * aux["centers"]["center"], rtol=1e-6)
  # The temperature warms up over the first half of the run (teacher_temp_warmup=0.5).
  temps = [float(fields["extra"].update(extra, student, aux, jnp.int32(s - 1), schedule)
                 ["teacher_temp"]) for s in (25, 50, 80)]
  start, end = config.smit.warmup_teacher_temp, config.smit.teacher_temp
  np.testing.assert_allclose(temps, [(start + end) / 2, end, end], rtol=1e-6)


def test_the_step_loss_on_a_sharded_batch_equals_one_devices():
  config = tiny()
  model = pretrain.build_model(config)
  fields = smit.task_fields(model, config)
  params = jax.jit(fields["init_params"])(jax.random.PRNGKey(0))  # eager init: op by op
  extra = fields["extra"].init(params)
  batch, rng = crops(4), jax.random.PRNGKey(1)
  from vismae_jax import parallel
  mesh = parallel.make_mesh(config.mesh)
  assert mesh.devices.size == 2
  with parallel.activation_sharding(mesh):
    replicated = parallel.replicated(mesh)
    sharded = jax.jit(fields["loss_fn"], in_shardings=(
        replicated, parallel.batch_sharding(mesh), replicated, replicated))(
            params, batch, rng, extra)
  single = jax.jit(fields["loss_fn"])(params, batch, rng, extra)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), sharded,
               single)


def test_the_config_rejects_impossible_smit_settings():
  config = tiny()
  config.data.path = "/shards"
  config.mae.mask_unit = 12
  config.smit.update(head_dims=(64, 16), teacher_temp=0.0, momentum=1.5, hand_on="both",
                     pixel_weight=-1.0)
  with pytest.raises(config_lib.ConfigError) as error:
    config_checks.validate(config, 1, 1)
  for field in ("mae.mask_unit=12", "head_dims=(64, 16)", "teacher_temp=0.0", "momentum=1.5",
                "hand_on='both'", "pixel_weight=-1.0"):
    assert f"config.{field}" in str(error.value) or f"config.smit.{field}" in str(error.value)
  config = tiny()
  config.data.path = "/shards"
  config.model.arch = "swin"
  with pytest.raises(config_lib.ConfigError, match="smit pretrains config.model.arch="):
    config_checks.validate(config, 1, 1)


@pytest.fixture(scope="module")
def volume_shards(tmp_path_factory):
  from data_pipelines import ingest, volume_ingest
  root = tmp_path_factory.mktemp("smit")
  msd = synthetic_decathlon(root / "msd")
  config = volume_ingest.VolumeIngestConfig(input=f"{msd}/imagesTr", output=str(root / "shards"),
                                            salt="test", modality="MR")
  ingest.ingest(config)
  return config.output


class HiddenStates(swin_unetr.MonaiSwin):
  """SwinUNETR's encoder alone: what MONAI's SwinTransformer returns (normalised h0..h4)."""

  @nn.compact
  def __call__(self, images):
    x, skips = self.encode(images, True)
    return [swin_unetr.normalize(h) for h in skips + [x]]


def encoder_leaves(params):
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  return {k: v for k, v in flat.items() if k.startswith(("patch_embed/", "encoder/"))}


@pytest.mark.slow
def test_a_short_run_learns_replays_on_one_device_and_hands_its_teacher_on(volume_shards,
                                                                            tmp_path):
  """40 steps of :tiny on eight devices: the masked-voxel loss and the student's distance from
  the teacher fall, the teacher does not collapse; resumed from step 30 on one device the run
  replays steps 31-40; fine-tuning takes the teacher's encoder (every SwinUNETR encoder tensor)
  and the export is MONAI's Swin encoder, strict and equal."""
  straight = str(tmp_path / "straight")
  schedule = [f"--config.data.path={volume_shards}", "--config.total_steps=40",
              "--config.log_every=1"]
  proc = run_main(straight, *schedule, "--config.mesh.data=8", devices=8,
                  config="configs/smit3d.py:tiny")
  assert f"Reconstructions: {straight}/reconstructions.png" in proc.stdout
  metrics = read_metrics(straight)
  mean = lambda name, part: np.mean([m[name] for m in part])
  # The synthetic volumes' noise (a sixth of the ellipsoids' contrast) bounds the L1 from below
  # near 0.8 of the normalised intensities: about 0.94 falls to 0.90 in 40 steps.
  assert mean("pixel_loss", metrics[-10:]) < 0.97 * mean("pixel_loss", metrics[:10]), metrics
  assert mean("student_kl", metrics[-10:]) < 0.7 * mean("student_kl", metrics[:10]), metrics
  assert min(m["teacher_kl"] for m in metrics) > distillation.COLLAPSED_KL
  resumed = str(tmp_path / "resumed")
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "40"))
  proc = run_main(resumed, *schedule, devices=1, config="configs/smit3d.py:tiny")
  assert "resumed from step 30" in proc.stderr
  np.testing.assert_allclose([m["loss"] for m in read_metrics(resumed)][30:],
                             [m["loss"] for m in metrics][30:], rtol=1e-4)
  state = checkpoint.restore_on_host(f"{straight}/checkpoints/40/state")
  assert set(state["extra"]) == {"teacher", "center", "token_center", "teacher_temp"}
  teacher = encoder_leaves(state["extra"]["teacher"])
  assert len(teacher) == 118
  qkv = "encoder/layers_0/blocks_0/attn/qkv/kernel"
  assert not np.array_equal(teacher[qkv], encoder_leaves(state["params"])[qkv])

  seg = load_config("swin_unetr3d.py", "tiny")
  model = finetune.build_model(seg)
  target = jax.device_get(jax.jit(lambda rng: finetune.init_params(model, seg, rng))(
      jax.random.PRNGKey(0)))
  params, report = weights.load_into(straight, target, arch="swinunetr")
  assert len(report.loaded) == 118 == len(encoder_leaves(target))
  for name, value in encoder_leaves(params).items():
    np.testing.assert_array_equal(value, teacher[name], err_msg=name)

  proc = run_main(straight, "--config.task=export", config="configs/smit3d.py:tiny")
  assert "Exported MONAI SwinTransformer" in proc.stdout
  with open(f"{straight}/export/monai.json") as f:
    spec = json.load(f)
  torch = need("torch")
  import importlib
  need("monai")
  net = getattr(importlib.import_module(spec["module"]), spec["class"])(**spec["kwargs"]).eval()
  net.load_state_dict(torch.load(f"{straight}/export/monai.pt", weights_only=True), strict=True)
  x = crops(1, seed=3)[..., None]
  with torch.no_grad():
    theirs = net(torch.from_numpy(np.moveaxis(x, -1, 1)))
  encoder = HiddenStates(**config_lib.swin_kwargs(seg))
  ours = jax.jit(encoder.apply)({"params": {k: params[k] for k in ("patch_embed", "encoder")}}, x)
  assert len(ours) == len(theirs) == 5
  for mine, other in zip(ours, theirs):
    np.testing.assert_allclose(np.moveaxis(other.numpy(), 1, -1), mine, atol=1e-4, rtol=1e-4)
  # The export comes back in through the import of MONAI's SSL layout.
  params_back, report = weights.load_into(f"{straight}/export/monai.safetensors", target,
                                          arch="swinunetr")
  assert len(report.loaded) == 118
