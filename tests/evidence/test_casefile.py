"""Case files: untouched ones verify; every tampered file, field, manifest entry or proof fails, saying what."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from distillguard.core.errors import ConfigError, DistillguardError
from distillguard.evidence import (
    CaseManifest,
    InclusionProof,
    InvalidProofError,
    canonical_json,
    check_proof,
    disclose,
    key_fingerprint,
    prove,
    read_manifest,
    verify_case,
    verify_disclosure,
    verify_proof,
    write_case,
)
from distillguard.evidence.canonical import prompt_sha256
from distillguard.evidence.casefile import _differing_fields

from .conftest import CAMPAIGN, IP_KEY, RUN_INFO, VERDICTS, exchange_table, make_case, signing_key

CASE_FILES = [
    "manifest.json",
    "manifest.sig",
    "public_key.pem",
    "exchanges.parquet",
    "verdicts.jsonl",
    "campaign.json",
    "ip_key.hex",
]
Case = tuple[Path, CaseManifest]
fixture_ok = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@contextmanager
def copied(case_dir: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "case"
        shutil.copytree(case_dir, copy)
        yield copy


def resign(case_dir: Path, mutate: Any = None) -> None:
    """Re-sign the manifest with the genuine key after an edit, refreshing file digests.

    Models an insider who holds the signing key: the signature then holds, so only
    the deeper checks can catch the edit.
    """
    manifest = json.loads((case_dir / "manifest.json").read_bytes())
    for name in manifest["files"]:
        manifest["files"][name] = hashlib.sha256((case_dir / name).read_bytes()).hexdigest()
    if mutate is not None:
        mutate(manifest)
    data = canonical_json(manifest)
    (case_dir / "manifest.json").write_bytes(data)
    (case_dir / "manifest.sig").write_text(signing_key().sign(data).hex() + "\n")


# ------------------------------------------------------------------ untouched


def test_untouched_case_verifies(pristine_case: Case) -> None:
    case_dir, manifest = pristine_case
    report = verify_case(case_dir, expected_key=manifest.key_fingerprint)
    assert report.ok, report.failures
    assert len(report.checks) >= 15
    assert manifest.tree_size == 37 and manifest.accounts == 3 and manifest.verdicts == 3
    assert read_manifest(case_dir) == manifest


def test_case_is_byte_identical_for_same_input(pristine_case: Case, tmp_path: Path) -> None:
    again = tmp_path / "again"
    make_case(again)
    for name in CASE_FILES:
        assert (again / name).read_bytes() == (pristine_case[0] / name).read_bytes(), name


def test_row_order_of_input_does_not_change_root(pristine_case: Case, tmp_path: Path) -> None:
    shuffled = exchange_table().take(list(reversed(range(37))))
    manifest = write_case(
        tmp_path / "c",
        campaign=CAMPAIGN,
        exchanges=shuffled,
        verdicts=VERDICTS,
        run_info=RUN_INFO,
        signing_key=signing_key(),
        ip_key=IP_KEY,
    )
    assert manifest.root == pristine_case[1].root


def test_exchanges_are_sorted_by_ts_then_request_id(pristine_case: Case) -> None:
    stored = pq.read_table(pristine_case[0] / "exchanges.parquet")
    keys = list(
        zip(stored.column("ts").to_pylist(), stored.column("request_id").to_pylist(), strict=True)
    )
    assert keys == sorted(keys)
    assert stored.column("leaf_index").to_pylist() == list(range(37))


def test_write_case_rejects_bad_arguments(tmp_path: Path) -> None:
    common: dict[str, Any] = {
        "campaign": CAMPAIGN,
        "exchanges": exchange_table(3),
        "verdicts": VERDICTS,
        "run_info": RUN_INFO,
        "signing_key": signing_key(),
        "ip_key": IP_KEY,
    }
    with pytest.raises(ConfigError, match="at least 16 random bytes"):
        write_case(tmp_path / "a", **{**common, "ip_key": b"x"})
    with pytest.raises(ConfigError, match="'id'"):
        write_case(tmp_path / "b", **{**common, "campaign": {"members": []}})
    with pytest.raises(ConfigError, match="input_digests"):
        write_case(
            tmp_path / "c", **{**common, "run_info": {"config_hash": "x", "detector_versions": {}}}
        )
    with pytest.raises(DistillguardError, match="at least one exchange"):
        write_case(tmp_path / "d", **{**common, "exchanges": exchange_table(3).slice(0, 0)})
    assert not any(tmp_path.iterdir())  # nothing half-written


# ------------------------------------------------------------------ byte-level tampering


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_any_byte_flip_in_any_case_file_fails(pristine_case: Case, data: st.DataObject) -> None:
    case_dir, _ = pristine_case
    name = data.draw(st.sampled_from(CASE_FILES), label="file")
    size = (case_dir / name).stat().st_size
    offset = data.draw(st.integers(0, size - 1), label="offset")
    mask = data.draw(st.integers(1, 255), label="xor mask")
    with copied(case_dir) as copy:
        content = bytearray((copy / name).read_bytes())
        content[offset] ^= mask
        (copy / name).write_bytes(bytes(content))
        report = verify_case(copy)
    assert not report.ok
    assert any(name in failure or "manifest" in failure for failure in report.failures), (
        report.failures
    )


@pytest.mark.parametrize("name", CASE_FILES)
def test_missing_file_fails_naming_it(case_copy: Path, name: str) -> None:
    (case_copy / name).unlink()
    report = verify_case(case_copy)
    assert not report.ok
    assert any(f"{name}: cannot be read" in failure for failure in report.failures)


def test_truncated_file_fails(case_copy: Path) -> None:
    path = case_copy / "verdicts.jsonl"
    path.write_bytes(path.read_bytes()[:-40])
    failures = verify_case(case_copy).failures
    assert any("verdicts.jsonl: SHA-256" in f for f in failures)


def test_other_signer_is_caught_only_by_a_pinned_key(case_copy: Path, pristine_case: Case) -> None:
    forger = Ed25519PrivateKey.from_private_bytes(bytes(32))
    from distillguard.evidence.signing import public_key_pem

    (case_copy / "public_key.pem").write_bytes(public_key_pem(forger.public_key()))
    manifest = json.loads((case_copy / "manifest.json").read_bytes())
    manifest["signing_key"]["fingerprint"] = key_fingerprint(forger.public_key())
    data = canonical_json(manifest)
    (case_copy / "manifest.json").write_bytes(data)
    (case_copy / "manifest.sig").write_text(forger.sign(data).hex() + "\n")
    assert verify_case(case_copy).ok  # self-consistent: why the fingerprint must be pinned
    pinned = verify_case(case_copy, expected_key=pristine_case[1].key_fingerprint)
    assert pinned.failures == (
        f"signing key {key_fingerprint(forger.public_key())} is not the expected "
        f"{pristine_case[1].key_fingerprint}",
    )


# ------------------------------------------------------------------ field-level tampering, re-signed

COMMITTED_NAME = {"prompt": "prompt_sha256", "client_ip": "client_ip_hmac"}


def _edit_value(column: str, old: Any, data: st.DataObject) -> Any:
    if column == "ts":
        return old + timedelta(milliseconds=data.draw(st.integers(1, 10**6)))
    if column == "client_ip":
        return data.draw(st.ip_addresses().map(str))
    if column == "thinking":
        return data.draw(st.sampled_from([True, False, None]))
    if column in {
        "input_tokens",
        "output_tokens",
        "status",
        "messages_count",
        "tools_count",
        "latency_ms",
    }:
        return data.draw(st.integers(0, 10**6))
    return data.draw(st.text(max_size=20))


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_editing_any_raw_field_fails_naming_the_field(
    pristine_case: Case, data: st.DataObject
) -> None:
    case_dir, _ = pristine_case
    with copied(case_dir) as copy:
        table = pq.read_table(copy / "exchanges.parquet")
        columns = [c for c in table.column_names if c not in {"leaf_index", "record"}]
        if data.draw(st.booleans(), label="edit the record instead"):
            column = "record"
        else:
            column = data.draw(st.sampled_from(columns), label="column")
        row = data.draw(st.integers(0, table.num_rows - 1), label="row")
        values = table.column(column).to_pylist()
        if column == "record":
            record = json.loads(values[row])
            field = data.draw(st.sampled_from(sorted(record)), label="record field")
            record[field] = data.draw(st.text(max_size=12) | st.integers(0, 99) | st.none())
            assume(canonical_json(record).decode() != values[row])
            values[row] = canonical_json(record).decode()
            expected_name = field
        else:
            new = _edit_value(column, values[row], data)
            if column == "client_ip":
                assume(ipaddress.ip_address(new) != ipaddress.ip_address(values[row]))
            assume(new != values[row])
            values[row] = new
            expected_name = COMMITTED_NAME.get(column, column)
        index = table.column_names.index(column)
        table = table.set_column(index, column, pa.array(values, table.schema.field(column).type))
        pq.write_table(table, copy / "exchanges.parquet", compression="zstd")
        resign(copy)
        report = verify_case(copy)
    assert not report.ok
    assert any(expected_name in failure for failure in report.failures), (
        expected_name,
        report.failures,
    )


def test_edited_prompt_reports_row_and_field(case_copy: Path) -> None:
    table = pq.read_table(case_copy / "exchanges.parquet")
    prompts = table.column("prompt").to_pylist()
    prompts[4] = "something the customer never sent"
    table = table.set_column(table.column_names.index("prompt"), "prompt", pa.array(prompts))
    pq.write_table(table, case_copy / "exchanges.parquet")
    resign(case_copy)
    request_id = table.column("request_id")[4].as_py()
    assert verify_case(case_copy).failures == (
        f"exchanges.parquet row 5 (request_id {request_id!r}): record and raw exchange disagree on prompt_sha256",
    )


def test_consistently_edited_exchange_breaks_the_root(case_copy: Path, pristine_case: Case) -> None:
    # Edit raw prompt AND its committed record consistently: only the root can tell.
    table = pq.read_table(case_copy / "exchanges.parquet")
    prompts, records = table.column("prompt").to_pylist(), table.column("record").to_pylist()
    prompts[0] = "forged"
    record = json.loads(records[0])
    record["prompt_sha256"] = prompt_sha256("forged")
    records[0] = canonical_json(record).decode()
    table = table.set_column(table.column_names.index("prompt"), "prompt", pa.array(prompts))
    table = table.set_column(1, "record", pa.array(records))
    pq.write_table(table, case_copy / "exchanges.parquet")
    resign(case_copy)
    failures = verify_case(case_copy).failures
    assert len(failures) == 1 and failures[0].startswith(
        "Merkle root recomputed from the records is "
    )


@pytest.mark.parametrize("operation", ["drop", "duplicate", "swap"])
def test_removed_added_or_reordered_rows_fail(case_copy: Path, operation: str) -> None:
    table = pq.read_table(case_copy / "exchanges.parquet")
    if operation == "drop":
        table = table.slice(1)
    elif operation == "duplicate":
        table = pa.concat_tables([table, table.slice(3, 1)])
    else:
        table = table.take([1, 0, *range(2, table.num_rows)])
    pq.write_table(table, case_copy / "exchanges.parquet")
    resign(case_copy)
    failures = verify_case(case_copy).failures
    assert any(f.startswith("Merkle root recomputed") for f in failures)
    assert any("leaf_index" in f or "exchanges, the manifest says" in f for f in failures)


MANIFEST_EDITS = {
    "root": (lambda m: m["merkle"].update(root="0" * 64), "Merkle root"),
    "tree_size": (
        lambda m: (m["merkle"].update(tree_size=36), m["counts"].update(exchanges=36)),
        "the manifest says 36",
    ),
    "size disagreement": (
        lambda m: m["merkle"].update(tree_size=38),
        "tree_size and counts.exchanges",
    ),
    "accounts": (lambda m: m["counts"].update(accounts=4), "accounts"),
    "verdicts": (lambda m: m["counts"].update(verdicts=2), "verdicts"),
    "first ts": (lambda m: m["time_span"].update(first="2026-03-01T11:00:00.000Z"), "time span"),
    "last ts": (lambda m: m["time_span"].update(last="2026-03-01T13:00:00.000Z"), "time span"),
    "ip key id": (lambda m: m["records"].update(ip_key_id="1" * 64), "ip_key_id"),
    "file digest": (
        lambda m: m["files"].update({"campaign.json": "2" * 64}),
        "campaign.json: SHA-256",
    ),
    "key fingerprint": (
        lambda m: m["signing_key"].update(fingerprint="sha256:" + "3" * 64),
        "fingerprint",
    ),
    "format": (lambda m: m.update(format="distillguard-case/0"), "manifest format"),
}


@pytest.mark.parametrize("edit", sorted(MANIFEST_EDITS))
def test_resigned_manifest_edits_fail(case_copy: Path, edit: str) -> None:
    mutate, expected = MANIFEST_EDITS[edit]
    resign(case_copy, mutate)
    failures = verify_case(case_copy).failures
    assert failures and any(expected in f for f in failures), failures


# ------------------------------------------------------------------ proofs


def test_every_exchange_proves_against_root_alone(pristine_case: Case) -> None:
    case_dir, manifest = pristine_case
    ids = (
        pq.read_table(case_dir / "exchanges.parquet", columns=["request_id"]).column(0).to_pylist()
    )
    for index, request_id in enumerate(ids):
        proof = prove(case_dir, request_id)
        assert proof.leaf_index == index and proof.tree_size == 37
        assert verify_proof(json.loads(proof.dumps()), manifest.root, manifest.tree_size)
        assert json.loads(proof.record)["request_id"] == request_id


def test_prove_unknown_request_id_is_an_error(pristine_case: Case) -> None:
    with pytest.raises(DistillguardError, match="request_id 'nope' is not in case camp-7-"):
        prove(pristine_case[0], "nope")


def _flip_hex(value: str, bit: int) -> str:
    raw = bytearray(bytes.fromhex(value))
    raw[(bit // 8) % len(raw)] ^= 1 << (bit % 8)
    return raw.hex()


@pytest.fixture(scope="module")
def some_proofs(pristine_case: Case) -> list[InclusionProof]:
    ids = (
        pq.read_table(pristine_case[0] / "exchanges.parquet", columns=["request_id"])
        .column(0)
        .to_pylist()
    )
    return [prove(pristine_case[0], rid) for rid in ids]


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_tampered_proof_fails(
    pristine_case: Case, some_proofs: list[InclusionProof], data: st.DataObject
) -> None:
    manifest = pristine_case[1]
    proof = some_proofs[data.draw(st.integers(0, len(some_proofs) - 1), label="proof index")]
    kind = data.draw(
        st.sampled_from(["path", "root", "record", "index", "size", "drop", "extra", "text"])
    )
    bit = data.draw(st.integers(0, 255), label="bit")
    tampered: InclusionProof | str
    if kind == "path":
        entry = data.draw(st.integers(0, len(proof.audit_path) - 1), label="entry")
        path = list(proof.audit_path)
        path[entry] = _flip_hex(path[entry], bit)
        tampered = dataclasses.replace(proof, audit_path=tuple(path))
    elif kind == "root":
        tampered = dataclasses.replace(proof, root=_flip_hex(proof.root, bit))
    elif kind == "record":
        position = data.draw(st.integers(0, len(proof.record) - 1), label="position")
        char = data.draw(st.characters(codec="utf-8", exclude_categories=("Cs",)), label="char")
        assume(char != proof.record[position])
        tampered = dataclasses.replace(
            proof, record=proof.record[:position] + char + proof.record[position + 1 :]
        )
    elif kind == "index":
        other = data.draw(
            st.integers(-1, 40).filter(lambda i: i != proof.leaf_index), label="index"
        )
        tampered = dataclasses.replace(proof, leaf_index=other)
    elif kind == "size":
        other = data.draw(st.integers(0, 80).filter(lambda n: n != proof.tree_size), label="size")
        tampered = dataclasses.replace(proof, tree_size=other)
    elif kind == "drop":
        tampered = dataclasses.replace(proof, audit_path=proof.audit_path[:-1])
    elif kind == "extra":
        tampered = dataclasses.replace(proof, audit_path=(*proof.audit_path, manifest.root))
    else:
        text = bytearray(proof.dumps().encode())
        text[data.draw(st.integers(0, len(text) - 1), label="offset")] ^= data.draw(
            st.integers(1, 255)
        )
        tampered = bytes(text).decode("utf-8", "replace")
        assume(tampered != proof.dumps())
    with pytest.raises(InvalidProofError):
        check_proof(tampered, manifest.root, manifest.tree_size)
    assert not verify_proof(tampered, manifest.root, manifest.tree_size)


def test_proof_against_another_root_says_so(
    pristine_case: Case, some_proofs: list[InclusionProof]
) -> None:
    with pytest.raises(InvalidProofError, match="not the published root"):
        check_proof(some_proofs[0], "f" * 64)


# ------------------------------------------------------------------ disclosure


@pytest.fixture(scope="module")
def bundle(pristine_case: Case, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    ids = (
        pq.read_table(pristine_case[0] / "exchanges.parquet", columns=["request_id"])
        .column(0)
        .to_pylist()
    )
    chosen = [ids[9], ids[0], ids[36]]
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    disclose(pristine_case[0], chosen, out)
    return out, chosen


def test_disclosure_bundle_verifies_and_holds_no_raw_content(
    pristine_case: Case, bundle: tuple[Path, list[str]]
) -> None:
    out, chosen = bundle
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "manifest.sig",
        "proofs.jsonl",
        "public_key.pem",
    ]
    report = verify_disclosure(out, expected_key=pristine_case[1].key_fingerprint)
    assert report.ok, report.failures
    text = b"".join(p.read_bytes() for p in out.iterdir()).decode("utf-8")
    raw = pq.read_table(pristine_case[0] / "exchanges.parquet").to_pylist()
    for row in raw:
        if row["prompt"]:
            assert row["prompt"] not in text
        assert row["client_ip"] not in text
    assert IP_KEY.hex() not in text
    disclosed = {
        json.loads(json.loads(line)["record"])["request_id"]
        for line in (out / "proofs.jsonl").read_text().splitlines()
    }
    assert disclosed == set(chosen)


def test_disclosed_proofs_verify_with_root_alone(
    bundle: tuple[Path, list[str]], pristine_case: Case
) -> None:
    # A third party holding only the published root and size, and the proofs.
    root, size = pristine_case[1].root, pristine_case[1].tree_size
    lines = (bundle[0] / "proofs.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(verify_proof(line, root, size) for line in lines)
    # ... and who knows one prompt can confirm it is the one committed.
    raw = {
        r["request_id"]: r
        for r in pq.read_table(pristine_case[0] / "exchanges.parquet").to_pylist()
    }
    for line in lines:
        record = json.loads(json.loads(line)["record"])
        assert record["prompt_sha256"] == prompt_sha256(raw[record["request_id"]]["prompt"])


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_byte_flip_in_a_bundle_fails(
    bundle: tuple[Path, list[str]], data: st.DataObject
) -> None:
    name = data.draw(
        st.sampled_from(["manifest.json", "manifest.sig", "public_key.pem", "proofs.jsonl"])
    )
    with copied(bundle[0]) as copy:
        content = bytearray((copy / name).read_bytes())
        content[data.draw(st.integers(0, len(content) - 1), label="offset")] ^= data.draw(
            st.integers(1, 255)
        )
        (copy / name).write_bytes(bytes(content))
        report = verify_disclosure(copy)
    assert not report.ok
    assert any(name in f or "manifest" in f for f in report.failures), report.failures


def test_disclose_refuses_a_tampered_case(case_copy: Path, tmp_path: Path) -> None:
    (case_copy / "campaign.json").write_text("{}\n")
    with pytest.raises(DistillguardError, match=r"campaign\.json: SHA-256"):
        disclose(case_copy, ["r-0001"], tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize(
    ("stored", "named"),
    [
        ({"thinking": 1, "model": "m"}, "thinking"),  # Python has 1 == True; JSON does not
        ({"thinking": True, "input_tokens": 7.0}, "input_tokens"),  # 7.0 is not 7
        ({"thinking": True, "model": "m", "extra": None}, "extra"),
    ],
)
def test_a_field_that_differs_only_in_json_type_is_named(
    stored: dict[str, Any], named: str
) -> None:
    expected = canonical_json({"thinking": True, "model": "m", "input_tokens": 7}).decode()
    base = {"thinking": True, "model": "m", "input_tokens": 7}
    assert _differing_fields(json.dumps({**base, **stored}), expected) == named
    # Near miss: the same values in another key order differ in encoding only.
    assert _differing_fields(json.dumps(dict(reversed(list(base.items())))), expected).startswith(
        "encoding only"
    )
