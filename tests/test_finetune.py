"""The fine-tuning tasks: what frozen and held encoders train, and learning on real BUSI images."""
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import read_metrics, run_main, shared_dataset
from vismae_jax import checkpoint, config_lib
from vismae_jax.convert import torch_names
from vismae_jax.train import finetune, loop, optim

SEG = "configs/finetune_seg.py:tiny"


def classification_batch():
  return {"image": np.random.default_rng(0).integers(0, 255, (8, 64, 64), np.uint8),
          "label": np.arange(8) % 2}


def test_a_frozen_encoder_gets_no_gradient_and_no_backward_pass():
  flops = {}
  for frozen in (False, True):
    config = config_lib.finetune("classification", "tiny")
    config.finetune.freeze_encoder = frozen
    fns = finetune.functions(config)
    params = jax.jit(fns.init_params)(jax.random.PRNGKey(0))
    grad = jax.jit(jax.grad(fns.loss_fn)).lower(params, classification_batch(),
                                                jax.random.PRNGKey(1))
    flops[frozen] = grad.cost_analysis()["flops"]
  grads = grad.compile()(params, classification_batch(), jax.random.PRNGKey(1))
  assert all(not np.any(g) for k in optim.ENCODER for g in jax.tree.leaves(grads[k]))
  assert np.abs(grads["head"]["kernel"]).max() > 0
  # Without the encoder's backward pass a step is little more than the forward pass.
  assert flops[True] < 0.5 * flops[False], flops


def test_probe_first_holds_the_encoder_while_the_head_trains_then_releases_it():
  config = config_lib.finetune("classification", "tiny")
  config.finetune.probe_first = 0.2
  fns = finetune.functions(config)
  tx = optim.make_optimizer(config)
  state = loop.make_state_initializer(tx, 0)(jax.jit(fns.init_params)(jax.random.PRNGKey(0)))
  schedule = optim.schedule(config, steps_per_epoch=2.0, total_steps=10)
  assert schedule["probe_steps"] == 2
  step = jax.jit(loop.make_train_step(fns.loss_fn, tx))
  batch = classification_batch()

  def moved(a, b, part):
    return max(np.abs(x - y).max() for x, y in zip(jax.tree.leaves(a["params"][part]),
                                                   jax.tree.leaves(b["params"][part])))
  start = jax.tree.map(np.asarray, state)
  for _ in range(2):
    state, _ = step(state, batch, schedule)
  assert moved(state, start, "encoder") == moved(state, start, "patch_embed") == 0
  assert moved(state, start, "head") > 0
  held = jax.tree.map(np.asarray, state)
  state, _ = step(state, batch, schedule)
  assert moved(state, held, "encoder") > 0 and moved(state, held, "patch_embed") > 0


@pytest.mark.data
@pytest.mark.slow
def test_fine_tuning_improves_validation_dice_over_its_first_evaluation(tmp_path):
  csv_path = os.path.join(shared_dataset("busi"), "labels.csv")
  # 0.01 epochs is under one step: min_steps sets the length (250 steps, 10 evaluations).
  run_main(str(tmp_path), f"--config.data.csv={csv_path}", "--config.protocol.max_folds=1",
           "--config.total_steps=0", "--config.num_epochs=0.01", "--config.min_steps=250",
           "--config.checkpoint_every=25", config=SEG)
  run_dir = os.path.join(str(tmp_path), "runs", "random_labels100_fold0")
  dice = [m["val_dice"] for m in read_metrics(run_dir) if "val_dice" in m]
  assert len(dice) == 10 and max(dice[1:]) > dice[0] + 0.03, dice
  directory, best = checkpoint.chosen_step(run_dir, "val_dice")
  assert ocp.CheckpointManager(directory).all_steps() == [best]  # the best is what is kept
  assert ocp.CheckpointManager(directory).metrics(best)["val_dice"] == pytest.approx(max(dice))


@pytest.mark.data
@pytest.mark.slow
def test_freeze_encoder_trains_only_what_follows_the_encoder(tmp_path, tiny_pretrained):
  """Linear probing from the command line: the classifier's encoder ends as it was loaded."""
  pretrained = tiny_pretrained
  csv_path = os.path.join(shared_dataset("busi"), "labels.csv")  # label: 3 classes
  run_main(str(tmp_path), f"--config.data.csv={csv_path}", "--config.finetune.num_classes=3",
           f"--config.finetune.pretrained={pretrained}", "--config.finetune.freeze_encoder=True",
           "--config.protocol.max_folds=1", "--config.total_steps=20",
           config="configs/finetune_cls.py:tiny")
  source = torch_names.to_torch(checkpoint.load_params(pretrained), image_size=64)
  tuned = torch_names.to_torch(checkpoint.load_params(
      os.path.join(str(tmp_path), "runs", "pretrained_labels100_fold0"), "val_auc"))
  encoder = [n for n in tuned if n.startswith(("patch_embed.", "layers.")) and n in source]
  assert len(encoder) > 20
  for name in encoder:
    np.testing.assert_array_equal(tuned[name], source[name], err_msg=name)
  # The head learnt: it moved away from the random initialisation the run started from.
  config = config_lib.finetune("classification", "tiny")
  config.finetune.num_classes = 3
  init = finetune.functions(config).init_params(
      jax.random.split(jax.random.PRNGKey(config.seed))[0])
  initial = torch_names.to_torch(jax.device_get(init))
  assert np.abs(tuned["head.weight"] - initial["head.weight"]).max() > 1e-3
