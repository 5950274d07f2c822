"""Data pipelines: raw images -> ArrayRecord shards -> grain iterators for training."""


class DatasetError(ValueError):
  """Data that cannot be used as asked (a CSV without the columns, a folder without images,
  an output written with other options); the message names the file and the problem."""
