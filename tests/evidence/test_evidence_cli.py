"""keygen, verify, prove and disclose on the command line: exit 0 / 3 (evidence fails) / 2 (error)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.evidence import CaseManifest, load_signing_key

runner = CliRunner()
Case = tuple[Path, CaseManifest]


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def test_keygen_writes_private_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "signing.pem"
    result = runner.invoke(app, ["keygen", "--out", str(key_file)])
    assert result.exit_code == 0, result.output
    assert "sha256:" in flat(result.output)
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    load_signing_key(key_file)
    again = runner.invoke(app, ["keygen", "--out", str(key_file)])
    assert again.exit_code == 2 and "already exists" in flat(again.output)
    assert runner.invoke(app, ["keygen", "--out", str(key_file), "--force"]).exit_code == 0


def test_verify_untouched_case_exits_zero(pristine_case: Case) -> None:
    case_dir, manifest = pristine_case
    result = runner.invoke(app, ["verify", str(case_dir), "--expect-key", manifest.key_fingerprint])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output


def test_verify_tampered_case_exits_three_saying_what(case_copy: Path) -> None:
    (case_copy / "campaign.json").write_text('{"id":"someone-else"}\n')
    result = runner.invoke(app, ["verify", str(case_copy)])
    assert result.exit_code == 3
    assert "FAILED: campaign.json: SHA-256" in flat(result.output)


def test_verify_missing_directory_exits_two(tmp_path: Path) -> None:
    result = runner.invoke(app, ["verify", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "is not a directory" in flat(result.output)


def test_prove_then_verify_proof_against_root(pristine_case: Case, tmp_path: Path) -> None:
    case_dir, manifest = pristine_case
    result = runner.invoke(app, ["prove", str(case_dir), "r-0012"])
    assert result.exit_code == 0, result.output
    proof = json.loads(result.output)
    assert json.loads(proof["record"])["request_id"] == "r-0012"
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(result.output)
    ok = runner.invoke(
        app, ["verify", "--proof", str(proof_file), "--root", manifest.root, "--tree-size", "37"]
    )
    assert ok.exit_code == 0, ok.output
    wrong = runner.invoke(app, ["verify", "--proof", str(proof_file), "--root", "0" * 64])
    assert wrong.exit_code == 3
    assert "not the published root" in flat(wrong.output)
    no_root = runner.invoke(app, ["verify", "--proof", str(proof_file)])
    assert no_root.exit_code == 2 and "--proof needs --root" in flat(no_root.output)


def test_prove_unknown_request_exits_two(pristine_case: Case) -> None:
    result = runner.invoke(app, ["prove", str(pristine_case[0]), "missing-id"])
    assert result.exit_code == 2
    assert "request_id 'missing-id' is not in case" in flat(result.output)


def test_disclose_then_verify_bundle(pristine_case: Case, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    result = runner.invoke(
        app, ["disclose", str(pristine_case[0]), "r-0003", "r-0020", "--out", str(bundle)]
    )
    assert result.exit_code == 0, result.output
    verified = runner.invoke(app, ["verify", str(bundle)])
    assert verified.exit_code == 0, verified.output
    lines = (bundle / "proofs.jsonl").read_text().splitlines()
    lines[0] = lines[0].replace('"tree_size":37', '"tree_size":38')
    (bundle / "proofs.jsonl").write_text("\n".join(lines) + "\n")
    tampered = runner.invoke(app, ["verify", str(bundle)])
    assert tampered.exit_code == 3
    assert "proofs.jsonl line 1: proof claims a tree of 38 leaves, the manifest says 37" in flat(
        tampered.output
    )
