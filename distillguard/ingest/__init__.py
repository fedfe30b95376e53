"""Ingest: a log directory in the data contract (Parquet, JSONL, OTel spans, CSV) in; checked Arrow tables out."""

from distillguard.ingest.ipintel import lookup, parse_cidrs, parse_ips
from distillguard.ingest.log import Log, load_log
from distillguard.ingest.tables import read_labels

__all__ = ["Log", "load_log", "lookup", "parse_cidrs", "parse_ips", "read_labels"]
