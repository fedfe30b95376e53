"""The share stage's library entry points the CLI calls: export campaigns, import bundles, make keys."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from distillguard.core.atomic import write_text_atomic
from distillguard.core.indicators import (
    GroupKey,
    merge_stores,
    read_indicator_store,
    write_indicator_store,
)
from distillguard.ingest import load_log
from distillguard.share.harvest import ShareOptions, harvest, read_campaigns
from distillguard.share.importer import ImportLimits, import_bytes, read_bundle_bytes
from distillguard.share.stix import build_bundle, dumps
from distillguard.share.taxii import PublishStatus, TaxiiTarget, poll, publish


@dataclass(frozen=True)
class ExportSummary:
    """What an export produced (counts only: the bundle itself is the artefact)."""

    bundle: dict[str, Any]
    campaigns: int
    objects_by_type: dict[str, int]
    vetoed: dict[str, int]
    published: PublishStatus | None


def export_campaigns(
    results: Path,
    logdir: Path,
    key: GroupKey,
    *,
    producer: str,
    out: Path | None = None,
    taxii: TaxiiTarget | None = None,
    tlp: str = "amber",
    config: Mapping[str, Any] | None = None,
    created: datetime | None = None,
) -> ExportSummary:
    """``campaigns.json`` in ``results`` + the log → a STIX bundle written to ``out`` and/or published."""
    options = ShareOptions.from_config(config)
    campaigns = read_campaigns(results / "campaigns.json")
    log = load_log(logdir, config)
    h = harvest(log, campaigns, options)
    doc = build_bundle(h, key, producer=producer, options=options, tlp=tlp, created=created)
    if out is not None:
        write_text_atomic(out, dumps(doc))
    status = publish(doc, taxii) if taxii is not None else None
    counts: dict[str, int] = {}
    for o in doc["objects"]:
        counts[o["type"]] = counts.get(o["type"], 0) + 1
    return ExportSummary(doc, len(h.campaigns), counts, h.vetoed, status)


@dataclass(frozen=True)
class ImportSummary:
    """What an import added to the store."""

    store: Path
    added_rows: int
    store_rows: int
    peers: tuple[str, ...]
    skipped: dict[str, int]


def import_bundle(
    store: Path,
    *,
    path: Path | None = None,
    taxii: TaxiiTarget | None = None,
    key: GroupKey | None = None,
    limits: ImportLimits | None = None,
    imported_at: datetime | None = None,
    added_after: datetime | None = None,
) -> ImportSummary:
    """Validate a peer's bundle (file or TAXII collection) and merge it into the store at ``store``."""
    lim = limits or ImportLimits()
    if (path is None) == (taxii is None):
        raise ValueError("give exactly one of path or taxii")
    if path is not None:
        data, source = read_bundle_bytes(path, lim), str(path)
    else:
        assert taxii is not None
        data, source = poll(taxii, added_after=added_after), f"taxii:{taxii.url}"
    result = import_bytes(data, source, limits=lim, key=key, imported_at=imported_at)
    merged = merge_stores(read_indicator_store(store), result.rows)
    write_indicator_store(merged, store)
    return ImportSummary(store, result.rows.num_rows, merged.num_rows, result.peers, result.skipped)


def keygen(path: Path) -> str:
    """Write a fresh random sharing-group key to ``path``; returns its public key id."""
    key = GroupKey.generate()
    key.save(path)
    return key.key_id
