"""The sample shards and the grain pretraining pipeline: slices per host, epochs, resuming,
workers, modality filters and mixtures."""
import hashlib

import numpy as np

from data_pipelines import pretrain_input, records


def test_modality_filter(sample_dir):
  us = pretrain_input.record_source(sample_dir, ["US"])
  assert len(us) == 96
  assert {records.decode(us[i])["modality"] for i in range(len(us))} == {"US"}
  assert pretrain_input.num_examples(sample_dir, ["XR", "US"]) == 256


def image_hash(image):
  return hashlib.sha1(image.tobytes()).hexdigest()


def host_batches(sample_dir, process_index, process_count, n, per_host_batch):
  ds = pretrain_input.pretrain_dataset(sample_dir, modalities=(), seed=7,
                                       per_host_batch=per_host_batch,
                                       process_index=process_index, process_count=process_count)
  it = pretrain_input.make_iterator(ds, workers=0)
  return [next(it) for _ in range(n)]


def test_two_hosts_see_disjoint_slices_that_rebuild_the_single_host_batches(sample_dir):
  single = host_batches(sample_dir, 0, 1, 32, 8)  # one epoch: 256 / 8
  host0 = host_batches(sample_dir, 0, 2, 32, 4)
  host1 = host_batches(sample_dir, 1, 2, 32, 4)
  for k in range(32):
    np.testing.assert_array_equal(np.concatenate([host0[k], host1[k]]), single[k])
  seen0 = {image_hash(im) for b in host0 for im in b}
  seen1 = {image_hash(im) for b in host1 for im in b}
  assert not seen0 & seen1
  assert len(seen0 | seen1) == 256  # together they cover the epoch, each image once


def test_epochs_are_reshuffled(sample_dir):
  batches = host_batches(sample_dir, 0, 1, 64, 8)
  first = [image_hash(im) for b in batches[:32] for im in b]
  second = [image_hash(im) for b in batches[32:] for im in b]
  assert sorted(first) == sorted(second) and first != second


def test_restored_iterator_continues_exactly(sample_dir):
  ds = pretrain_input.pretrain_dataset(sample_dir, modalities=(), seed=1, per_host_batch=8,
                                       process_index=0, process_count=1)
  it = pretrain_input.make_iterator(ds, workers=0)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  resumed = pretrain_input.make_iterator(ds, workers=0)
  resumed.set_state(state)
  for batch in expected:
    np.testing.assert_array_equal(next(resumed), batch)


def test_worker_processes_give_the_same_batches_and_resume(sample_dir):
  from absl import flags
  flags.FLAGS.mark_as_parsed()  # grain's worker processes need parsed absl flags
  ds = pretrain_input.pretrain_dataset(sample_dir, modalities=(), seed=3, per_host_batch=8,
                                       process_index=0, process_count=1)
  expected = [b for b, _ in zip(pretrain_input.make_iterator(ds, workers=0), range(6))]
  it = pretrain_input.make_iterator(ds, workers=2)
  for batch in expected[:3]:
    np.testing.assert_array_equal(next(it), batch)
  state = it.get_state()
  resumed = pretrain_input.make_iterator(ds, workers=2)
  resumed.set_state(state)
  for batch in expected[3:]:
    np.testing.assert_array_equal(next(resumed), batch)


def test_mixture_weights_set_modality_proportions(sample_dir):
  source = pretrain_input.record_source(sample_dir, ["US"])
  us = {records.decode_image(source[i]).tobytes() for i in range(len(source))}
  for weights, expected in (({"US": 1.0, "XR": 1.0}, 0.5), ({"US": 3.0, "XR": 1.0}, 0.75)):
    ds = pretrain_input.pretrain_dataset(sample_dir, modalities=(), seed=0, per_host_batch=8,
                                         process_index=0, process_count=1, mixture=weights)
    it = pretrain_input.make_iterator(ds, workers=0)
    share = np.mean([im.tobytes() in us for _ in range(50) for im in next(it)])
    assert abs(share - expected) < 0.03, (weights, share)
