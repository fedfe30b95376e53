"""Per-account and per-end-user features: consumes the signals table (+ accounts), produces feature tables and account-level detections."""

from __future__ import annotations

from distillguard.features.aggregate import compute_account_features, compute_end_user_features
from distillguard.features.detectors import REGISTRY, AccountFeatureDetector

__all__ = [
    "REGISTRY",
    "AccountFeatureDetector",
    "compute_account_features",
    "compute_end_user_features",
]
