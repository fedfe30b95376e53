"""Hash-committed, signed case files for a campaign; end-to-end verification, inclusion proofs, disclosure.

A case directory (written atomically as a whole)::

    manifest.json      RFC 8785 JSON: root, counts, time span, run info, file digests, key fingerprint
    manifest.sig       hex Ed25519 signature of the exact bytes of manifest.json, then a newline
    public_key.pem     the signer's public key (SubjectPublicKeyInfo PEM)
    exchanges.parquet  leaf_index, record (the committed record), then the raw contract columns
    verdicts.jsonl     the evidence behind each member's verdict, one RFC 8785 JSON object a line
    campaign.json      the campaign as the detector described it (RFC 8785 JSON)
    ip_key.hex         the case's IP key (secret: the case directory is private material)

The Merkle leaves are the committed records (see :mod:`distillguard.evidence.canonical`)
in ``(ts, request_id)`` order. A *disclosure bundle* holds only ``manifest.json``,
``manifest.sig``, ``public_key.pem`` and ``proofs.jsonl``: chosen records in their
committed form with their audit paths, which verify against the signed root alone.
docs/evidence.md describes the scheme with a worked example.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from distillguard import __version__
from distillguard.core.atomic import atomic_path
from distillguard.core.errors import ConfigError, DistillguardError, InvalidInputError, Problem
from distillguard.core.schema import EXCHANGE_SCHEMA
from distillguard.evidence.canonical import (
    RECORD_FIELDS,
    RECORD_SCHEME,
    canonical_json,
    check_ip_key,
    committed_records,
    ip_key_id,
    normalise_exchanges,
    sha256_hex,
)
from distillguard.evidence.merkle import (
    InvalidProofError,
    MerkleTree,
    leaf_hash,
    verify_inclusion,
)
from distillguard.evidence.signing import (
    key_fingerprint,
    load_public_key,
    public_key_pem,
    sign,
    signature_valid,
)

CASE_FORMAT: Final = "distillguard-case/1"
PROOF_FORMAT: Final = "distillguard-inclusion-proof/1"

MANIFEST: Final = "manifest.json"
SIGNATURE: Final = "manifest.sig"
PUBLIC_KEY: Final = "public_key.pem"
EXCHANGES: Final = "exchanges.parquet"
VERDICTS: Final = "verdicts.jsonl"
CAMPAIGN: Final = "campaign.json"
IP_KEY: Final = "ip_key.hex"
PROOFS: Final = "proofs.jsonl"
#: Files whose SHA-256 the manifest lists (the key and signature are checked on their own).
DIGESTED_FILES: Final = (EXCHANGES, VERDICTS, CAMPAIGN)
REQUIRED_RUN_KEYS: Final = ("config_hash", "detector_versions", "input_digests")

TREE_DESCRIPTION: Final = (
    "RFC 6962 Merkle tree hash over SHA-256: leaf = SHA-256(0x00 || record bytes), "
    "node = SHA-256(0x01 || left || right)"
)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SIG_TEXT = re.compile(r"[0-9a-f]{128}\n")
_MAX_ROW_REPORTS: Final = 5


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CaseManifest:
    """The signed facts about a case file, read from ``manifest.json``."""

    case_id: str
    campaign_id: str
    root: str
    tree_size: int
    first_ts: str
    last_ts: str
    accounts: int
    verdicts: int
    key_fingerprint: str
    data: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CaseManifest:
        """Read the fields this package relies on; ``DistillguardError`` naming what is wrong."""
        try:
            if data["format"] != CASE_FORMAT:
                raise DistillguardError(
                    f"manifest format is {data['format']!r}, expected {CASE_FORMAT!r}"
                )
            manifest = cls(
                case_id=_typed(data["case_id"], str),
                campaign_id=_typed(data["campaign_id"], str),
                root=_typed(data["merkle"]["root"], str),
                tree_size=_typed(data["merkle"]["tree_size"], int),
                first_ts=_typed(data["time_span"]["first"], str),
                last_ts=_typed(data["time_span"]["last"], str),
                accounts=_typed(data["counts"]["accounts"], int),
                verdicts=_typed(data["counts"]["verdicts"], int),
                key_fingerprint=_typed(data["signing_key"]["fingerprint"], str),
                data=data,
            )
            exchanges = _typed(data["counts"]["exchanges"], int)
        except (KeyError, TypeError) as exc:
            raise DistillguardError(f"manifest lacks or mistypes field {exc}") from exc
        if not _HEX64.fullmatch(manifest.root):
            raise DistillguardError("manifest root is not 64 lower-case hex digits")
        if manifest.tree_size != exchanges:
            raise DistillguardError("manifest tree_size and counts.exchanges disagree")
        return manifest


def _typed(value: Any, kind: type) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{value!r} (expected {kind.__name__})")
    return value


@dataclass(frozen=True)
class VerifyReport:
    """What a verification checked, and every failure it found (empty when the evidence holds)."""

    subject: str
    checks: tuple[str, ...]
    failures: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class InclusionProof:
    """One exchange's committed record with its RFC 6962 audit path to a case's root.

    Every field is checked by :func:`check_proof`; the case is identified by its
    root (and tree size), not by a free-text label that nothing could check.
    """

    leaf_index: int
    tree_size: int
    record: str
    audit_path: tuple[str, ...]
    root: str

    @property
    def leaf_hash(self) -> str:
        return leaf_hash(self.record.encode("utf-8")).hex()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PROOF_FORMAT,
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "record": self.record,
            "leaf_hash": self.leaf_hash,
            "audit_path": list(self.audit_path),
            "root": self.root,
        }

    def dumps(self) -> str:
        """The proof as RFC 8785 JSON text."""
        return canonical_json(self.to_json()).decode("utf-8")

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str | bytes) -> InclusionProof:
        """Parse a proof strictly; :class:`InvalidProofError` names the first thing wrong."""
        if isinstance(data, str | bytes):
            try:
                data = json.loads(data)
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidProofError(f"proof is not JSON: {exc}") from exc
        if not isinstance(data, Mapping):
            raise InvalidProofError("proof must be a JSON object")
        expected = {
            "format",
            "leaf_index",
            "tree_size",
            "record",
            "leaf_hash",
            "audit_path",
            "root",
        }
        if set(data) != expected:
            raise InvalidProofError(f"proof fields are {sorted(data)}, expected {sorted(expected)}")
        if data["format"] != PROOF_FORMAT:
            raise InvalidProofError(
                f"proof format is {data['format']!r}, expected {PROOF_FORMAT!r}"
            )
        try:
            path = _typed(data["audit_path"], list)
            proof = cls(
                leaf_index=_typed(data["leaf_index"], int),
                tree_size=_typed(data["tree_size"], int),
                record=_typed(data["record"], str),
                audit_path=tuple(_typed(entry, str) for entry in path),
                root=_typed(data["root"], str),
            )
        except TypeError as exc:
            raise InvalidProofError(f"proof field has the wrong type: {exc}") from exc
        for position, entry in enumerate(proof.audit_path):
            if not _HEX64.fullmatch(entry):
                raise InvalidProofError(
                    f"audit path entry {position} is not 64 lower-case hex digits"
                )
        if not _HEX64.fullmatch(proof.root):
            raise InvalidProofError("proof root is not 64 lower-case hex digits")
        if data["leaf_hash"] != proof.leaf_hash:
            raise InvalidProofError("leaf_hash does not match the SHA-256 leaf hash of the record")
        return proof


# --------------------------------------------------------------------------- writing


def write_case(
    case_dir: str | Path,
    *,
    campaign: Mapping[str, Any],
    exchanges: pa.Table,
    verdicts: Sequence[Mapping[str, Any]],
    run_info: Mapping[str, Any],
    signing_key: Ed25519PrivateKey,
    ip_key: bytes,
    scope: Mapping[str, Any] | None = None,
) -> CaseManifest:
    """Write the case file for one campaign to ``case_dir`` (atomically) and return its manifest.

    ``scope``, when given, is signed into the manifest: how the committed exchanges were chosen
    when they are not all of the campaign's (see ``evidence.case_max_exchanges``).

    ``campaign`` is the campaign as detected (needs ``id`` or ``campaign_id``);
    ``exchanges`` every exchange attributed to it, in the contract's columns;
    ``verdicts`` the evidence behind each member's verdict; ``run_info`` must hold
    ``config_hash``, ``detector_versions`` and ``input_digests`` (more keys are kept);
    ``ip_key`` (≥ 16 random bytes; use a fresh one per case) keys the client-IP hashes.
    The same inputs and keys give a byte-identical directory.
    """
    try:
        check_ip_key(ip_key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    campaign_id = campaign.get("id", campaign.get("campaign_id"))
    if not isinstance(campaign_id, str) or not campaign_id:
        raise ConfigError("the campaign needs a non-empty string 'id' (or 'campaign_id')")
    missing = [key for key in REQUIRED_RUN_KEYS if key not in run_info]
    if missing:
        raise ConfigError(f"run_info lacks {missing}; a case file must record them")
    table = normalise_exchanges(exchanges)
    if table.num_rows == 0:
        raise InvalidInputError(
            [Problem("exchanges", None, None, "a case file needs at least one exchange")]
        )
    table = table.sort_by([("ts", "ascending"), ("request_id", "ascending")])
    records = committed_records(table, ip_key)
    record_texts: list[str] = records.to_pylist()
    tree = MerkleTree.from_leaves(text.encode("utf-8") for text in record_texts)
    root = tree.root.hex()

    stored = table.add_column(0, "record", records).add_column(
        0, "leaf_index", pa.array(range(table.num_rows), pa.int64())
    )
    campaign_bytes = _canonical_line(campaign, "campaign")
    verdict_bytes = b"".join(_canonical_line(v, f"verdict {i + 1}") for i, v in enumerate(verdicts))
    run = json.loads(_canonical_line(run_info, "run_info"))
    public_key = signing_key.public_key()
    first, last = json.loads(record_texts[0])["ts"], json.loads(record_texts[-1])["ts"]

    case_dir = Path(case_dir)
    with atomic_path(case_dir) as staged:
        staged.mkdir()
        pq.write_table(stored, staged / EXCHANGES, compression="zstd")
        (staged / VERDICTS).write_bytes(verdict_bytes)
        (staged / CAMPAIGN).write_bytes(campaign_bytes)
        (staged / IP_KEY).write_text(ip_key.hex() + "\n", encoding="ascii")
        (staged / PUBLIC_KEY).write_bytes(public_key_pem(public_key))
        manifest: dict[str, Any] = {
            "format": CASE_FORMAT,
            "case_id": f"{campaign_id}-{root[:16]}",
            "campaign_id": campaign_id,
            "created_by": f"distillguard {__version__}",
            "merkle": {"tree": TREE_DESCRIPTION, "root": root, "tree_size": tree.size},
            "records": {
                "scheme": RECORD_SCHEME,
                "fields": list(RECORD_FIELDS),
                "encoding": "RFC 8785 (JCS) JSON, UTF-8",
                "order": "ts, then request_id",
                "prompt_sha256": "hex SHA-256 of the prompt's UTF-8 bytes",
                "client_ip_hmac": "hex HMAC-SHA256 under the case IP key of the compressed address text",
                "ip_key_id": ip_key_id(ip_key),
            },
            "counts": {
                "exchanges": tree.size,
                "accounts": pc.count_distinct(table.column("account_id")).as_py(),
                "verdicts": len(verdicts),
            },
            "time_span": {"first": first, "last": last},
            "run": run,
            "files": {name: sha256_hex((staged / name).read_bytes()) for name in DIGESTED_FILES},
            "signing_key": {"algorithm": "Ed25519", "fingerprint": key_fingerprint(public_key)},
        }
        if scope is not None:
            manifest["scope"] = dict(scope)
        manifest_bytes = canonical_json(manifest)
        (staged / MANIFEST).write_bytes(manifest_bytes)
        (staged / SIGNATURE).write_text(
            sign(signing_key, manifest_bytes).hex() + "\n", encoding="ascii"
        )
    return CaseManifest.from_json(manifest)


def _json_default(value: Any) -> Any:
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if hasattr(value, "item"):  # numpy / pyarrow scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _canonical_line(value: Any, what: str) -> bytes:
    try:
        plain = json.loads(json.dumps(value, default=_json_default, allow_nan=False))
        return canonical_json(plain) + b"\n"
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} cannot be written as canonical JSON: {exc}") from exc


# --------------------------------------------------------------------------- verification


class _Checks:
    def __init__(self) -> None:
        self.passed: list[str] = []
        self.failed: list[str] = []

    def check(self, condition: bool, passed: str, failed: str) -> bool:
        (self.passed if condition else self.failed).append(passed if condition else failed)
        return condition

    def report(self, subject: Path) -> VerifyReport:
        return VerifyReport(str(subject), tuple(self.passed), tuple(self.failed))


def _read(directory: Path, name: str, checks: _Checks) -> bytes | None:
    try:
        return (directory / name).read_bytes()
    except OSError as exc:
        checks.failed.append(f"{name}: cannot be read ({exc.strerror})")
        return None


def _signed_manifest(
    directory: Path, checks: _Checks, expected_key: str | None
) -> CaseManifest | None:
    """Check manifest, signature and public key; the manifest if it parses, else ``None``."""
    manifest_bytes = _read(directory, MANIFEST, checks)
    signature_text = _read(directory, SIGNATURE, checks)
    key_bytes = _read(directory, PUBLIC_KEY, checks)
    manifest: CaseManifest | None = None
    if manifest_bytes is not None:
        try:
            data = json.loads(manifest_bytes)
            if not isinstance(data, dict):
                raise DistillguardError("manifest is not a JSON object")
            if canonical_json(data) != manifest_bytes:
                raise DistillguardError("manifest is not in RFC 8785 canonical form")
            manifest = CaseManifest.from_json(data)
            checks.passed.append(f"{MANIFEST}: canonical and well formed")
        except (ValueError, UnicodeDecodeError, DistillguardError) as exc:
            checks.failed.append(f"{MANIFEST}: {exc}")
    if key_bytes is None:
        return manifest
    try:
        public_key = load_public_key(key_bytes)
    except DistillguardError as exc:
        checks.failed.append(f"{PUBLIC_KEY}: {exc}")
        return manifest
    fingerprint = key_fingerprint(public_key)
    checks.check(
        public_key_pem(public_key) == key_bytes,
        f"{PUBLIC_KEY}: canonical PEM",
        f"{PUBLIC_KEY}: not the canonical PEM encoding of its key (file altered)",
    )
    if expected_key is not None:
        checks.check(
            fingerprint == expected_key,
            f"signing key is the expected {expected_key}",
            f"signing key {fingerprint} is not the expected {expected_key}",
        )
    if manifest is not None:
        checks.check(
            manifest.key_fingerprint == fingerprint,
            f"{PUBLIC_KEY}: fingerprint matches the manifest",
            f"{PUBLIC_KEY}: fingerprint {fingerprint} differs from the manifest's {manifest.key_fingerprint}",
        )
    if signature_text is not None and manifest_bytes is not None:
        text = signature_text.decode("ascii", "replace")
        if not _SIG_TEXT.fullmatch(text):
            checks.failed.append(f"{SIGNATURE}: not 128 lower-case hex digits and a newline")
        else:
            checks.check(
                signature_valid(public_key, bytes.fromhex(text[:-1]), manifest_bytes),
                f"{SIGNATURE}: valid Ed25519 signature of {MANIFEST} by {fingerprint}",
                f"{SIGNATURE}: not a valid signature of {MANIFEST} by {fingerprint} "
                "(manifest or signature altered)",
            )
    return manifest


def verify_case(case_dir: str | Path, *, expected_key: str | None = None) -> VerifyReport:
    """Check a case file end to end; the report lists every check and every failure.

    Checks the signature and key (pinned to ``expected_key``, a ``sha256:`` fingerprint,
    if given), the manifest's file digests, that each stored record is the committed
    form of its raw exchange (raw prompt and IP against their hashes included), the
    leaf order and indices, the recomputed Merkle root, counts and time span.
    Raises :class:`DistillguardError` only when ``case_dir`` is not a directory.
    """
    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise DistillguardError(f"{case_dir} is not a directory")
    checks = _Checks()
    manifest = _signed_manifest(case_dir, checks, expected_key)
    if manifest is not None:
        files = manifest.data.get("files")
        if not isinstance(files, dict) or set(files) != set(DIGESTED_FILES):
            checks.failed.append(f"{MANIFEST}: 'files' must list exactly {list(DIGESTED_FILES)}")
        else:
            for name in DIGESTED_FILES:
                content = _read(case_dir, name, checks)
                if content is not None:
                    digest = sha256_hex(content)
                    checks.check(
                        digest == files[name],
                        f"{name}: SHA-256 matches the manifest",
                        f"{name}: SHA-256 {digest} differs from the manifest's {files[name]} (file altered)",
                    )
    ip_key = _read_ip_key(case_dir, checks, manifest)
    _check_verdicts(case_dir, checks, manifest)
    _check_exchanges(case_dir, checks, manifest, ip_key)
    return checks.report(case_dir)


def _read_ip_key(case_dir: Path, checks: _Checks, manifest: CaseManifest | None) -> bytes | None:
    content = _read(case_dir, IP_KEY, checks)
    if content is None:
        return None
    text = content.decode("ascii", "replace")
    if not re.fullmatch(r"(?:[0-9a-f]{2}){16,}\n", text):
        checks.failed.append(f"{IP_KEY}: not lower-case hex of at least 16 bytes and a newline")
        return None
    key = bytes.fromhex(text[:-1])
    if manifest is not None:
        expected = manifest.data.get("records", {}).get("ip_key_id")
        if not checks.check(
            ip_key_id(key) == expected,
            f"{IP_KEY}: matches the manifest's ip_key_id",
            f"{IP_KEY}: does not match the manifest's ip_key_id (wrong or altered key)",
        ):
            return None
    return key


def _check_verdicts(case_dir: Path, checks: _Checks, manifest: CaseManifest | None) -> None:
    content = _read(case_dir, VERDICTS, checks)
    if content is None:
        return
    lines = content.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        try:
            json.loads(line)
        except (ValueError, UnicodeDecodeError):
            checks.failed.append(f"{VERDICTS}: line {number} is not JSON")
            return
    if manifest is not None:
        checks.check(
            len(lines) == manifest.verdicts,
            f"{VERDICTS}: {len(lines)} verdicts as the manifest says",
            f"{VERDICTS}: {len(lines)} verdicts, the manifest says {manifest.verdicts}",
        )


def _check_exchanges(
    case_dir: Path, checks: _Checks, manifest: CaseManifest | None, ip_key: bytes | None
) -> None:
    path = case_dir / EXCHANGES
    try:
        stored = pq.read_table(path)
        stored.validate(full=True)  # e.g. invalid UTF-8 in a string column
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
        # a flipped byte can land in the Parquet footer's column names, which pyarrow decodes eagerly
        checks.failed.append(f"{EXCHANGES}: cannot be read as Parquet ({exc})")
        return
    expected_columns = ["leaf_index", "record", *EXCHANGE_SCHEMA.names]
    if stored.column_names != expected_columns:
        checks.failed.append(
            f"{EXCHANGES}: columns are {stored.column_names}, expected {expected_columns}"
        )
        return
    records = stored.column("record")
    if records.type != pa.string() or records.null_count:
        checks.failed.append(f"{EXCHANGES}: column 'record' must be non-null strings")
        return
    texts: list[str] = records.to_pylist()
    count = len(texts)
    ids = stored.column("request_id")

    def where(row: int) -> str:
        return f"{EXCHANGES} row {row + 1} (request_id {ids[row].as_py()!r})"

    indices = stored.column("leaf_index")
    checks.check(
        indices.type == pa.int64() and indices.to_pylist() == list(range(count)),
        f"{EXCHANGES}: leaf_index runs 0..{count - 1}",
        f"{EXCHANGES}: leaf_index is not 0, 1, 2, ... in row order",
    )

    # Root first: it depends only on the stored records, whatever the raw columns say.
    tree = MerkleTree.from_leaves(text.encode("utf-8") for text in texts)
    if manifest is not None:
        checks.check(
            count == manifest.tree_size,
            f"{EXCHANGES}: {count} exchanges as the manifest says",
            f"{EXCHANGES}: {count} exchanges, the manifest says {manifest.tree_size}",
        )
        checks.check(
            tree.root.hex() == manifest.root,
            f"Merkle root recomputed from the records equals the manifest root {manifest.root}",
            f"Merkle root recomputed from the records is {tree.root.hex()}, "
            f"not the manifest root {manifest.root} (records added, removed, reordered or altered)",
        )
        if count:
            first = _record_field(texts[0], "ts")
            last = _record_field(texts[-1], "ts")
            checks.check(
                (first, last) == (manifest.first_ts, manifest.last_ts),
                f"time span {first} .. {last} as the manifest says",
                f"time span of the records is {first} .. {last}, the manifest says "
                f"{manifest.first_ts} .. {manifest.last_ts}",
            )

    try:
        raw = normalise_exchanges(stored.select(EXCHANGE_SCHEMA.names), source=EXCHANGES)
    except InvalidInputError as exc:
        checks.failed.extend(f"{EXCHANGES}: raw exchanges invalid: {p}" for p in exc.problems)
        return
    order = pc.sort_indices(raw, sort_keys=[("ts", "ascending"), ("request_id", "ascending")])
    checks.check(
        order.to_pylist() == list(range(count)),
        f"{EXCHANGES}: rows in (ts, request_id) order",
        f"{EXCHANGES}: rows are not in (ts, request_id) order",
    )
    if manifest is not None:
        accounts = pc.count_distinct(raw.column("account_id")).as_py()
        checks.check(
            accounts == manifest.accounts,
            f"{EXCHANGES}: {accounts} accounts as the manifest says",
            f"{EXCHANGES}: {accounts} accounts, the manifest says {manifest.accounts}",
        )
    if ip_key is None:
        checks.failed.append("raw exchanges not checked against their records: no valid IP key")
        return
    try:
        expected = committed_records(raw, ip_key, source=EXCHANGES)
    except InvalidInputError as exc:
        checks.failed.extend(f"{EXCHANGES}: raw exchanges invalid: {p}" for p in exc.problems)
        return
    differs = pc.invert(pc.equal(records.combine_chunks(), expected))
    bad_rows = pc.indices_nonzero(differs).to_pylist()
    if not bad_rows:
        checks.passed.append(
            f"{EXCHANGES}: every record is the committed form of its raw exchange (prompt and IP hashes included)"
        )
        return
    for row in bad_rows[:_MAX_ROW_REPORTS]:
        checks.failed.append(
            f"{where(row)}: record and raw exchange disagree on "
            f"{_differing_fields(texts[row], expected[row].as_py())}"
        )
    if len(bad_rows) > _MAX_ROW_REPORTS:
        checks.failed.append(
            f"{EXCHANGES}: ... and {len(bad_rows) - _MAX_ROW_REPORTS} more such rows"
        )


def _record_field(text: str, name: str) -> Any:
    try:
        value = json.loads(text)
        return value.get(name) if isinstance(value, dict) else None
    except ValueError:
        return None


def _differing_fields(stored: str, expected: str) -> str:
    try:
        have = json.loads(stored)
    except ValueError:
        return "everything (stored record is not JSON)"
    if not isinstance(have, dict):
        return "everything (stored record is not a JSON object)"
    want = json.loads(expected)

    def field(record: dict[str, Any], name: str) -> str | None:
        # Compared as JSON text, not as Python values: true == 1 and 1 == 1.0 in Python, and a
        # record with 1 for true differs in that field, not only in its encoding.
        return json.dumps(record[name], sort_keys=True) if name in record else None

    names = sorted(k for k in set(have) | set(want) if field(have, k) != field(want, k))
    return ", ".join(names) if names else "encoding only (record is not canonical JSON)"


# --------------------------------------------------------------------------- proofs


def read_manifest(directory: str | Path) -> CaseManifest:
    """The manifest of a case directory or disclosure bundle, parsed but NOT verified."""
    path = Path(directory) / MANIFEST
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise DistillguardError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DistillguardError(f"{path} is not a JSON object")
    return CaseManifest.from_json(data)


def _proofs_for(case_dir: Path, request_ids: Iterable[str]) -> list[InclusionProof]:
    manifest = read_manifest(case_dir)
    checks = _Checks()
    _signed_manifest(case_dir, checks, None)
    if checks.failed:
        raise DistillguardError(f"{case_dir} fails verification: " + "; ".join(checks.failed))
    try:
        stored = pq.read_table(case_dir / EXCHANGES, columns=["record", "request_id"])
    except (OSError, pa.ArrowException) as exc:
        raise DistillguardError(f"cannot read {case_dir / EXCHANGES}: {exc}") from exc
    texts: list[str] = stored.column("record").to_pylist()
    tree = MerkleTree.from_leaves(text.encode("utf-8") for text in texts)
    if tree.root.hex() != manifest.root:
        raise DistillguardError(
            f"{case_dir}: records do not hash to the signed root; run `distillguard verify` on it"
        )
    ids = stored.column("request_id")
    proofs = []
    for request_id in dict.fromkeys(request_ids):
        index = pc.index(ids, request_id).as_py()
        if index < 0:
            raise DistillguardError(f"request_id {request_id!r} is not in case {manifest.case_id}")
        proofs.append(
            InclusionProof(
                leaf_index=index,
                tree_size=tree.size,
                record=texts[index],
                audit_path=tuple(node.hex() for node in tree.inclusion_proof(index)),
                root=manifest.root,
            )
        )
    return sorted(proofs, key=lambda proof: proof.leaf_index)


def prove(case_dir: str | Path, request_id: str) -> InclusionProof:
    """The inclusion proof of exchange ``request_id`` in the case's signed root."""
    return _proofs_for(Path(case_dir), [request_id])[0]


def check_proof(
    proof: InclusionProof | Mapping[str, Any] | str | bytes,
    root_hex: str,
    tree_size: int | None = None,
) -> InclusionProof:
    """Check ``proof`` against a published root; return it parsed, or raise :class:`InvalidProofError`.

    Pass ``tree_size`` from the signed manifest: the root alone does not bind the
    leaf index and tree size a proof claims (RFC 9162 verification accepts e.g.
    leaf 0 of 4 as leaf 0 of 3), only the record's membership.
    """
    parsed = proof if isinstance(proof, InclusionProof) else InclusionProof.from_json(proof)
    if not _HEX64.fullmatch(root_hex):
        raise InvalidProofError("the published root must be 64 lower-case hex digits")
    if parsed.root != root_hex:
        raise InvalidProofError(
            f"proof is for root {parsed.root}, not the published root {root_hex}"
        )
    if tree_size is not None and parsed.tree_size != tree_size:
        raise InvalidProofError(
            f"proof claims a tree of {parsed.tree_size} leaves, the manifest says {tree_size}"
        )
    record = parsed.record.encode("utf-8")
    try:
        value = json.loads(record)
    except ValueError as exc:
        raise InvalidProofError(f"record is not JSON: {exc}") from exc
    if (
        not isinstance(value, dict)
        or set(value) != set(RECORD_FIELDS)
        or canonical_json(value) != record
    ):
        raise InvalidProofError(f"record is not a canonical {RECORD_SCHEME} record")
    verify_inclusion(
        parsed.leaf_index,
        parsed.tree_size,
        leaf_hash(record),
        [bytes.fromhex(entry) for entry in parsed.audit_path],
        bytes.fromhex(root_hex),
    )
    return parsed


def verify_proof(
    proof: InclusionProof | Mapping[str, Any] | str | bytes,
    root_hex: str,
    tree_size: int | None = None,
) -> bool:
    """Whether ``proof`` shows its record in the tree with ``root_hex`` (see :func:`check_proof`)."""
    try:
        check_proof(proof, root_hex, tree_size)
    except InvalidProofError:
        return False
    return True


# --------------------------------------------------------------------------- disclosure


def disclose(
    case_dir: str | Path,
    request_ids: Sequence[str],
    out_dir: str | Path,
    *,
    expected_key: str | None = None,
) -> Path:
    """Write a disclosure bundle for ``request_ids`` to ``out_dir`` (atomically); return it.

    The bundle holds the signed manifest, the public key and one proof per exchange
    with its committed record (prompt and IP only as hashes). Refuses to disclose
    from a case file that does not verify.
    """
    case_dir, out_dir = Path(case_dir), Path(out_dir)
    report = verify_case(case_dir, expected_key=expected_key)
    if not report.ok:
        raise DistillguardError(f"{case_dir} fails verification: " + "; ".join(report.failures))
    proofs = _proofs_for(case_dir, request_ids)
    with atomic_path(out_dir) as staged:
        staged.mkdir()
        for name in (MANIFEST, SIGNATURE, PUBLIC_KEY):
            (staged / name).write_bytes((case_dir / name).read_bytes())
        (staged / PROOFS).write_bytes(b"".join(canonical_json(p.to_json()) + b"\n" for p in proofs))
    return out_dir


def verify_disclosure(bundle_dir: str | Path, *, expected_key: str | None = None) -> VerifyReport:
    """Check a disclosure bundle: signed manifest, and every proof against its root and size."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise DistillguardError(f"{bundle_dir} is not a directory")
    checks = _Checks()
    manifest = _signed_manifest(bundle_dir, checks, expected_key)
    content = _read(bundle_dir, PROOFS, checks)
    if content is None or manifest is None:
        return checks.report(bundle_dir)
    lines = content.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    seen: set[int] = set()
    for number, line in enumerate(lines, start=1):
        where = f"{PROOFS} line {number}"
        try:
            proof = check_proof(line, manifest.root, manifest.tree_size)
        except InvalidProofError as exc:
            checks.failed.append(f"{where}: {exc}")
            continue
        ts = _record_field(proof.record, "ts")
        problems = []
        if proof.leaf_index in seen:
            problems.append(f"leaf {proof.leaf_index} disclosed twice")
        if not isinstance(ts, str) or not manifest.first_ts <= ts <= manifest.last_ts:
            problems.append(f"record ts {ts!r} outside the case's time span")
        seen.add(proof.leaf_index)
        checks.check(
            not problems,
            f"{where}: leaf {proof.leaf_index} verifies against root {manifest.root}",
            f"{where}: " + "; ".join(problems),
        )
    return checks.report(bundle_dir)
