"""DINO + iBOT pretraining (configs/dino.py): the losses by hand, the teacher's and centres'
moving averages, the collapse check, and a short run on the bundled real images whose teacher
is what the checkpoint hands on and the export's encoder fills the fine-tuning models'."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import (assert_encoder_export_transfers, assert_encoder_is_swinmaes, load_config,
                     pretraining_param_shapes, read_metrics, run_main)
from vismae_jax import checkpoint, config_checks, config_lib
from vismae_jax.models import dino
from vismae_jax.train import distillation, pretrain


def softmax(x, axis=-1):
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def test_the_pooled_loss_is_every_student_view_against_every_other_teacher_view():
  rng = np.random.default_rng(0)
  teacher = rng.normal(size=(2, 3, 5)).astype(np.float32)  # 2 global views, 3 images, K=5
  student = rng.normal(size=(4, 3, 5)).astype(np.float32)  # the 2 globals and 2 local views
  center = rng.normal(size=(1, 5)).astype(np.float32)
  terms = []
  for t in range(2):
    target = softmax((teacher[t] - center) / 0.04)
    for s in range(4):
      if s != t:  # 3 + 3 pairs: never a view against itself
        log_p = np.log(softmax(student[s] / 0.1))
        terms.append(-(target * log_p).sum(-1).mean())
  assert len(terms) == 6
  loss = dino.distillation_loss(teacher, student, center, 0.04, 0.1)
  assert float(loss) == pytest.approx(np.mean(terms), rel=1e-5)
  # The teacher is a target: no gradient reaches it.
  grad = jax.grad(lambda t: dino.distillation_loss(t, student, center, 0.04, 0.1))(teacher)
  assert not np.asarray(grad).any()


def test_the_masked_token_loss_counts_tokens_by_their_masked_share():
  rng = np.random.default_rng(1)
  teacher = rng.normal(size=(2, 1, 2, 2, 3)).astype(np.float32)
  student = rng.normal(size=(2, 1, 2, 2, 3)).astype(np.float32)
  weight = np.zeros((2, 1, 2, 2), np.float32)
  weight[0, 0, 0, 0], weight[0, 0, 1, 1] = 1.0, 0.5  # view 1: two tokens, one half masked
  weight[1, 0, 0, 1] = 1.0
  center = np.zeros((1, 3), np.float32)
  ce = -(softmax(teacher / 0.04) * np.log(softmax(student / 0.1))).sum(-1)
  view1 = (ce[0, 0, 0, 0] + 0.5 * ce[0, 0, 1, 1]) / 1.5
  expected = (view1 + ce[1, 0, 0, 1]) / 2
  loss = dino.masked_token_loss(teacher, student, weight, center, 0.04, 0.1)
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  # Tokens the student saw do not count, whatever their outputs.
  changed = student.copy()
  changed[0, 0, 1, 0] += 50.0
  assert float(dino.masked_token_loss(teacher, changed, weight, center, 0.04, 0.1)) == (
      pytest.approx(expected, rel=1e-5))


def test_token_weights_are_the_masked_share_of_each_last_stage_token():
  hidden = np.zeros((1, 4, 4), bool)
  hidden[0, :2, :2] = True  # the top-left last-stage token (2x2 tokens each) wholly
  hidden[0, 2, 3] = True  # a quarter of the bottom-right one
  np.testing.assert_array_equal(distillation.token_weights(hidden, 2), [[[1.0, 0.0],
                                                                          [0.0, 0.25]]])


def test_the_teacher_and_centres_move_by_their_momentum_after_each_update():
  config = load_config("dino.py", "tiny")
  config.dino.update(momentum=0.9, center_momentum=0.8)
  update = distillation.update_extra(config)
  extra = {"teacher": {"w": jnp.full((2,), 10.0)}, "center": jnp.zeros((1, 3)),
           "token_center": jnp.ones((1, 3))}
  params = {"w": jnp.zeros((2,))}
  aux = {"centers": {"center": jnp.full((1, 3), 5.0), "token_center": jnp.full((1, 3), 6.0)}}
  schedule = {"total_steps": jnp.int32(100)}
  first = update(extra, params, aux, jnp.int32(0), schedule)
  np.testing.assert_allclose(first["teacher"]["w"], [9.0, 9.0])  # 0.9 * 10 + 0.1 * 0
  np.testing.assert_allclose(first["center"], [[1.0] * 3])  # 0.8 * 0 + 0.2 * 5
  np.testing.assert_allclose(first["token_center"], [[2.0] * 3])  # 0.8 * 1 + 0.2 * 6
  # The momentum rises to 1 on a cosine: halfway it is (0.9 + 1) / 2, at the end the teacher
  # stays where it is.
  assert float(dino.teacher_momentum(50, 100, 0.9)) == pytest.approx(0.95)
  last = update(extra, params, aux, jnp.int32(100), schedule)
  np.testing.assert_allclose(last["teacher"]["w"], [10.0, 10.0])


def test_the_collapse_check_tells_a_collapsed_teacher_from_a_working_one():
  config = load_config("dino.py", "tiny")
  check = distillation.collapse_check(config)
  k = config.dino.head_dims[-1]
  center = np.zeros((1, k), np.float32)
  same = np.tile(np.linspace(0, 1, k, dtype=np.float32), (8, 1))  # every image alike
  stats = jax.tree.map(float, dino.collapse_statistics(same, center, 10.0))
  assert stats["teacher_kl"] == pytest.approx(0.0, abs=1e-6)
  assert "uniform output" in check(stats) and "config.dino.teacher_temp" in check(stats)
  peaked = jax.tree.map(float, dino.collapse_statistics(same, center, 0.001))
  assert "one prototype" in check(peaked)
  varied = np.random.default_rng(0).normal(size=(8, k)).astype(np.float32)
  stats = jax.tree.map(float, dino.collapse_statistics(varied, center, 0.1))
  assert stats["teacher_kl"] > 0.5 and check(stats) == ""


def test_the_encoder_is_swinmaes_and_one_head_serves_pooled_and_token_outputs():
  config = load_config("dino.py", "tiny")
  model = pretrain.build_model(config)
  params = pretraining_param_shapes(config)
  assert_encoder_is_swinmaes(params)
  assert set(params) == {"patch_embed", "mask_token", "encoder", "norm", "dino_head"}
  assert params["dino_head"]["prototypes"].shape == (32, 256)
  pooled, tokens = jax.eval_shape(lambda p: model.apply({"params": p},
                                                        jnp.zeros((3, 64, 64, 1))), params)
  assert pooled.shape == (3, 256) and tokens.shape == (3, 2, 2, 256)
  # Local views are smaller: the same model embeds them (windows pad to size).
  pooled, _ = jax.eval_shape(lambda p: model.apply({"params": p},
                                                   jnp.zeros((3, 32, 32, 1))), params)
  assert pooled.shape == (3, 256)


def test_the_views_masks_and_local_crops():
  config = load_config("dino.py", "tiny")
  config.dino.mask_prob = 1.0
  images = np.random.default_rng(0).integers(0, 256, (4, 80, 80), np.uint8)
  views, hidden, local = distillation.inputs(config, images, jax.random.PRNGKey(0))
  assert views.shape == (4, 2, 64, 64, 1) and local.shape == (4, 2, 32, 32, 1)
  # 30% of the 16 units of 16 px, hidden whole: ceil(4.8) = 5 units of 4x4 tokens each.
  assert hidden.shape == (4, 2, 16, 16) and (np.asarray(hidden).sum((2, 3)) == 5 * 16).all()
  config.dino.mask_prob = 0.0
  _, hidden, _ = distillation.inputs(config, images, jax.random.PRNGKey(0))
  assert not np.asarray(hidden).any()


def test_the_config_rejects_impossible_dino_settings():
  config = load_config("dino.py", "tiny")
  config.dino.update(head_dims=(128, 32), teacher_temp=0.0, momentum=1.5, local_size=20)
  with pytest.raises(config_lib.ConfigError) as error:
    config_checks.validate(config, 1, 1)
  for field in ("head_dims=(128, 32)", "teacher_temp=0.0", "momentum=1.5", "local_size=20"):
    assert f"config.dino.{field}" in str(error.value)


def test_a_short_run_on_real_images_learns_and_hands_on_its_teacher(tmp_path):
  """40 steps of :tiny on the bundled sample: the student closes on the teacher (the loss less
  the teacher's entropy, `student_kl`, the mean of the last 10 steps against the first 10),
  the teacher has not collapsed, the checkpoint keeps teacher and centres, `load_params` hands
  on the teacher, the export's encoder (the teacher's) fills the fine-tuning models', and the
  run resumes."""
  workdir = str(tmp_path / "dino")
  proc = run_main(workdir, "--config.total_steps=40", "--config.log_every=1",
                  config="configs/dino.py:tiny")
  assert f"Views: {workdir}/views.png" in proc.stdout
  metrics = read_metrics(workdir)
  gaps = [m["student_kl"] for m in metrics]
  assert len(gaps) == 40 and np.mean(gaps[-10:]) < 0.7 * np.mean(gaps[:10]), gaps
  assert min(m["teacher_kl"] for m in metrics) > distillation.COLLAPSED_KL
  assert "collapsed" not in proc.stderr
  state = checkpoint.restore_on_host(f"{workdir}/checkpoints/40/state")
  assert set(state["extra"]) == {"teacher", "center", "token_center"}
  assert np.abs(state["extra"]["center"]).max() > 0
  handed = checkpoint.load_params(workdir)
  teacher, student = (state["extra"]["teacher"]["encoder"], state["params"]["encoder"])
  kernel = lambda tree: tree["layers_0"]["blocks_0"]["attn"]["qkv"]["kernel"]
  np.testing.assert_array_equal(kernel(handed["encoder"]), kernel(teacher))
  assert not np.array_equal(kernel(teacher), kernel(student))
  assert_encoder_export_transfers(workdir, "configs/dino.py:tiny")
  # The teacher and centres resume with the rest of the state.
  proc = run_main(workdir, "--config.total_steps=45", "--config.log_every=1",
                  config="configs/dino.py:tiny")
  assert "resumed from step 40" in proc.stderr
  assert [m["step"] for m in read_metrics(workdir)] == list(range(1, 46))
