"""``labels.csv`` (ground truth, read only by evaluation): re-exports the checked reader."""

from distillguard.ingest.tables import read_labels

__all__ = ["read_labels"]
