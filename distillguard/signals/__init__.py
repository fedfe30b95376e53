"""Per-exchange signals: consumes contract exchanges, produces the signals table and exchange-level detections."""

from __future__ import annotations

from typing import Final

from distillguard.core.detector import Detector
from distillguard.signals.exchange import (
    SIGNAL_SCHEMA,
    CapabilityDetector,
    GraderUseDetector,
    NetworkKindDetector,
    ReasoningElicitationDetector,
    RewriteRequestDetector,
    TemplateFingerprintDetector,
    compute_exchange_signals,
    exchange_signals,
)

#: Every exchange-level detector, by id; the conformance suite iterates this.
REGISTRY: Final[dict[str, type[Detector]]] = {
    CapabilityDetector.info.id: CapabilityDetector,
    ReasoningElicitationDetector.info.id: ReasoningElicitationDetector,
    GraderUseDetector.info.id: GraderUseDetector,
    RewriteRequestDetector.info.id: RewriteRequestDetector,
    TemplateFingerprintDetector.info.id: TemplateFingerprintDetector,
    NetworkKindDetector.info.id: NetworkKindDetector,
}

__all__ = ["REGISTRY", "SIGNAL_SCHEMA", "compute_exchange_signals", "exchange_signals"]
