"""Corpora → token shards → batches."""
