"""Data pipelines: raw images -> ArrayRecord shards -> grain iterators for training."""
