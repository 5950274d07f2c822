"""Evaluation splits: k-fold by patient, fixed 72/8/20, nested stratified label fractions and
nested few-shot draws.

Every split is a pure function of (labels, groups, seed): the same call gives the same indices on
every host and in every rerun. Groups are patient keys where the dataset has them (images of one
patient never straddle train and test) and the image itself otherwise.
"""
import numpy as np

LABEL_FRACTIONS = (0.05, 0.10, 0.25, 0.50, 0.80, 1.00)


def _groups(n: int, groups) -> np.ndarray:
  return np.arange(n) if groups is None else np.asarray(groups)


def kfold(labels, k: int = 5, groups=None, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
  """(train, test) index pairs: k folds by group, stratified by label as far as groups allow."""
  from sklearn import model_selection  # here: it is slow to import
  labels = np.asarray(labels)
  splitter = model_selection.StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
  return [(np.sort(tr), np.sort(te)) for tr, te in
          splitter.split(np.zeros(len(labels)), labels, _groups(len(labels), groups))]


def holdout(indices, labels, fraction: float, groups=None, seed: int = 0):
  """Splits `indices` into (kept, held out ~fraction) by group, stratified: e.g. 9:1 train/val."""
  indices, labels = np.asarray(indices), np.asarray(labels)
  k = max(2, round(1 / fraction))
  g = None if groups is None else np.asarray(groups)[indices]
  kept, held = kfold(labels[indices], k, g, seed)[0]
  return indices[kept], indices[held]


def fixed_split(labels, groups=None, seed: int = 0, test: float = 0.2, val: float = 0.08):
  """(train, val, test) indices, 72/8/20 by default, by group and stratified."""
  labels = np.asarray(labels)
  rest, test_idx = holdout(np.arange(len(labels)), labels, test, groups, seed)
  train_idx, val_idx = holdout(rest, labels, val / (1 - test), groups, seed + 1)
  return train_idx, val_idx, test_idx


def _shuffled_by_class(indices: np.ndarray, labels: np.ndarray, seed) -> dict:
  """{class: its cases among `indices`, shuffled by `seed`}: the nested subsets are prefixes."""
  rng = np.random.default_rng(seed)
  return {c: rng.permutation(indices[labels == c]) for c in np.unique(labels)}


def label_fractions(indices, labels, fractions=LABEL_FRACTIONS, seed: int = 0) -> dict:
  """{fraction: sorted subset of `indices`}, nested (each inside the next) and stratified.

  Each class's examples are shuffled once; a fraction f keeps the first ceil(f * n_class) of
  every class, so a smaller subset is always a prefix of a larger one.
  """
  indices, labels = np.asarray(indices), np.asarray(labels)[np.asarray(indices)]
  by_class = _shuffled_by_class(indices, labels, seed)
  return {f: np.sort(np.concatenate([ids[:int(np.ceil(f * len(ids)))]
                                     for ids in by_class.values()]))
          for f in sorted(fractions)}


def shots(indices, labels, counts, seed) -> dict:
  """{n: sorted subset of `indices`} with n cases of every class of `labels` (None: n cases in
  all), nested (each inside the next).

  `labels` are those of all cases, so that a class without cases among `indices` has too few
  as well. Each class's cases are shuffled by `seed` alone (an int or a tuple of them, e.g.
  (seed, fold, draw)) and n keeps the first n: a draw is the same whichever other counts run.
  Raises ValueError naming the classes with fewer than max(counts) cases among `indices`.
  """
  indices = np.asarray(indices)
  classes = np.zeros(len(indices), int) if labels is None else np.asarray(labels)[indices]
  by_class = _shuffled_by_class(indices, classes, seed)
  if labels is not None:
    by_class = {c: by_class.get(c, indices[:0]) for c in np.unique(labels)}
  need = max(counts)
  short = [(c, len(ids)) for c, ids in by_class.items() if len(ids) < need]
  if short:
    raise ValueError(f"{need} cases {'in all' if labels is None else 'per class'} wanted, only "
                     + ", ".join(f"{n}" if labels is None else f"{n} of class {c}"
                                 for c, n in short))
  return {n: np.sort(np.concatenate([ids[:n] for ids in by_class.values()]))
          for n in sorted(counts)}
