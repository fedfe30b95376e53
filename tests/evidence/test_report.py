"""The analyst's report: self-contained, deterministic, careful with prompts, rebuildable from outputs."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.core.schema import IP_INTEL_SCHEMA
from distillguard.evidence.report import (
    CAPABILITY_SCHEMA,
    EDGE_SCHEMA,
    SNIPPET_CHARS,
    VOLUME_SCHEMA,
    CaseRef,
    ReportData,
    build_report,
    capabilities_from_campaigns,
    edges_from_link,
    render_report,
    report_data_from_outputs,
)

T0 = datetime(2026, 6, 1, tzinfo=UTC)
HOSTILE = "<script>alert('x')</script> " + "please explain step by step " * 20
MEMBERS = ["acct-a", "acct-b", "acct-c"]
INTEL = pa.table(
    {"cidr": ["73.0.0.0/8", "13.224.0.0/16"], "asn": [7922, 16509],
     "asn_org": ["COMCAST-7922", "AMAZON-02"], "kind": ["residential", "datacenter"]}
).cast(IP_INTEL_SCHEMA)  # fmt: skip


def _campaign() -> dict[str, Any]:
    return {
        "id": "C-abc123", "members": MEMBERS, "n_accounts": 3, "n_exchanges": 120,
        "first_ts": T0.isoformat(), "last_ts": (T0 + timedelta(hours=9)).isoformat(),
        "capability_targets": [{"capability": "reasoning", "share": 0.7}, {"capability": "coding", "share": 0.2}],
        "shared_indicators": [{"kind": "payment", "key": "pay-1", "n_members": 3, "key_weight": 1.0}],
        "indicator_kind_shares": {"payment": 1.0, "template": 0.5}, "cluster_detectors": {},
        "confidence": 0.97, "actions": {"suspend": 3},
    }  # fmt: skip


def _verdicts() -> list[dict[str, Any]]:
    out = []
    for i, acct in enumerate(MEMBERS):
        out.append({"account_id": acct, "action": "suspend", "score": 0.95, "cluster_id": "C-abc123", "reasons": [
            {"signal": "cluster.linkage", "value": 3.0, "detail": {"detector": "cluster.linkage@1", "contribution": 3.0,
             "reference": {"reference": "mean internal edge weight"}, "sample_request_ids": [f"r-{i}"]}}]})  # fmt: skip
    out.append({"account_id": "acct-dev", "action": "monitor", "score": 0.5, "cluster_id": None, "reasons": [
        {"signal": "token_ratio", "value": 2.0, "detail": {"contribution": 0.5, "sample_request_ids": ["r-9"]}}]})  # fmt: skip
    return out


def sample_data(labels: bool = True, case: bool = True) -> ReportData:
    """Three hours on model-old, then a pivot to model-new; background traffic throughout."""
    rows: list[tuple[datetime, str | None, str, int]] = []
    for h in range(10):
        hour = T0 + timedelta(hours=h)
        rows.append((hour, None, "model-old", 100 + h))
        rows.append((hour, "C-abc123", "model-old" if h < 3 else "model-new", 12))
    volume = pa.table(
        {"hour": [r[0] for r in rows], "campaign_id": [r[1] for r in rows], "model": [r[2] for r in rows], "n": [r[3] for r in rows]}
    ).cast(VOLUME_SCHEMA)  # fmt: skip
    addresses = pa.table(
        {"campaign_id": ["C-abc123"] * 2, "client_ip": ["73.1.2.3", "13.224.0.9"], "n": [90, 30]}
    )
    edges = pa.table({"campaign_id": ["C-abc123"] * 2, "account_a": ["acct-a", "acct-a"], "account_b": ["acct-b", "acct-c"],
                      "weight": [2.0, 1.0], "kind": ["payment", "ip"]}).cast(EDGE_SCHEMA)  # fmt: skip
    accounts = pa.table({"account_id": MEMBERS, "payment_fingerprint": ["pay-1"] * 3})
    lab = pa.table(
        {"account_id": [*MEMBERS, "acct-dev"], "label": ["attack"] * 3 + ["benign"],
         "campaign": ["june"] * 3 + [""], "persona": ["hydra"] * 3 + ["developer"]}
    )  # fmt: skip
    return ReportData(
        run={"config_hash": "f" * 64, "input_digests": {"exchanges.jsonl": "d" * 64}, "detectors": {"x": "1"}},
        campaigns=[_campaign()],
        verdicts=_verdicts(),
        volume=volume,
        addresses=addresses.cast(pa.schema([("campaign_id", pa.string()), ("client_ip", pa.string()), ("n", pa.int64())])),
        accounts=accounts,
        edges=edges,
        capabilities=capabilities_from_campaigns([_campaign()]),
        ip_intel=INTEL,
        snippets={"r-0": HOSTILE, "r-1": "", "r-2": "short prompt"},
        labels=lab if labels else None,
        case_files={"C-abc123": CaseRef("C-abc123", "ab" * 32, 120, "sha256:" + "0" * 64, "cases/C-abc123")} if case else {},
    )  # fmt: skip


def test_report_is_self_contained_and_has_key_elements(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    build_report(sample_data(), out)
    html = out.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<script" not in html.lower().replace("&lt;script", "")
    assert "<link" not in html.lower()
    assert 'id="campaigns-table"' in html and 'href="#c-C-abc123"' in html
    for cls in ("volume-plot", "caps-plot", "kinds-plot", "graph-plot", "case-root"):
        assert f'class="plot {cls}"' in html or f'class="{cls}"' in html, cls
    assert html.count("<svg") == 5  # volume, capabilities, network kinds, graph, personas
    assert "ab" * 32 in html  # the case-file root in full
    assert "pivot to model-new" in html and "moved to model-new" in html
    assert "not the network operator&#39;s involvement" in html


def test_prompt_snippets_are_short_and_escaped() -> None:
    html = render_report(sample_data())
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert HOSTILE[:200] not in html
    snippet = re.search(r"&lt;script&gt;alert.*?…", html)
    assert snippet is not None
    unescaped = snippet.group(0).replace("&lt;", "<").replace("&gt;", ">").replace("&#39;", "'")
    assert len(unescaped) <= SNIPPET_CHARS
    assert "(no content retained)" in html


def test_same_input_gives_identical_bytes() -> None:
    assert render_report(sample_data()) == render_report(sample_data())


def test_persona_view_with_and_without_labels() -> None:
    with_labels = render_report(sample_data(labels=True))
    assert "per persona" in with_labels and "hydra" in with_labels and "developer" in with_labels
    without = render_report(sample_data(labels=False, case=False))
    assert "per action" in without and "hydra" not in without
    assert re.search(r"<td>suspend</td>.*?<td class=\"num\">3</td>", without, re.S)
    assert "No case file was written" in without


def test_no_campaigns_still_renders() -> None:
    data = sample_data()
    empty = ReportData(run=data.run, campaigns=[], verdicts=[], volume=VOLUME_SCHEMA.empty_table(),
                       addresses=data.addresses.slice(0, 0), accounts=data.accounts.slice(0, 0),
                       edges=EDGE_SCHEMA.empty_table(), capabilities=CAPABILITY_SCHEMA.empty_table())  # fmt: skip
    assert "no campaign to report" in render_report(empty)


def test_edges_from_link_keeps_each_campaigns_subgraph() -> None:
    link = pa.table({"account_a": ["acct-a", "acct-a", "acct-b"], "account_b": ["acct-b", "zz-out", "acct-c"],
                     "weight": [1.5, 9.0, 0.5], "w_payment": [1.0, 9.0, 0.0], "w_ip": [0.5, 0.0, 0.5]})  # fmt: skip
    got = edges_from_link(link, [_campaign()]).to_pylist()
    assert got == [
        {
            "campaign_id": "C-abc123",
            "account_a": "acct-a",
            "account_b": "acct-b",
            "weight": 1.5,
            "kind": "payment",
        },
        {
            "campaign_id": "C-abc123",
            "account_a": "acct-b",
            "account_b": "acct-c",
            "weight": 0.5,
            "kind": "ip",
        },
    ]


def _tiny_log(root: Path) -> tuple[Path, Path]:
    logdir, outdir = root / "log", root / "out"
    logdir.mkdir()
    outdir.mkdir()
    lines = []
    for i in range(40):
        acct = MEMBERS[i % 3] if i < 30 else "acct-dev"
        ip = "73.1.2.3" if acct != "acct-dev" else "13.224.0.1"
        lines.append(json.dumps({"ts": (T0 + timedelta(minutes=17 * i)).isoformat().replace("+00:00", "Z"),
                                 "request_id": f"r-{i}", "account_id": acct, "client_ip": ip,
                                 "model": "model-old" if i < 20 else "model-new",
                                 "prompt": HOSTILE if i == 0 else f"question {i}", "input_tokens": 10, "output_tokens": 50}))  # fmt: skip
    (logdir / "exchanges.jsonl").write_text("\n".join(lines) + "\n")
    (logdir / "accounts.csv").write_text(
        "account_id,created_at,payment_fingerprint,signup_ip\n"
        + "".join(
            f"{a},2026-05-01T00:0{i}:00Z,pay-1,198.51.100.{i}\n" for i, a in enumerate(MEMBERS)
        )
        + "acct-dev,2025-01-01T00:00:00Z,pay-9,192.0.2.1\n"
    )
    (logdir / "ip_intel.csv").write_text(
        "cidr,asn,asn_org,kind\n73.0.0.0/8,7922,COMCAST-7922,residential\n"
    )
    (outdir / "campaigns.json").write_text(
        json.dumps({"campaigns": [_campaign()], "run": {"config_hash": "e" * 64}})
    )
    (outdir / "verdicts.jsonl").write_text("".join(json.dumps(v) + "\n" for v in _verdicts()))
    return logdir, outdir


def test_rebuild_from_outputs_aggregates_the_log(tmp_path: Path) -> None:
    logdir, outdir = _tiny_log(tmp_path)
    data = report_data_from_outputs(logdir, outdir)
    vol = data.volume.to_pylist()
    assert sum(r["n"] for r in vol) == 40
    assert sum(r["n"] for r in vol if r["campaign_id"] == "C-abc123") == 30
    assert {(r["client_ip"], r["n"]) for r in data.addresses.to_pylist()} == {("73.1.2.3", 30)}
    pairs = {(r["account_a"], r["account_b"]) for r in data.edges.to_pylist()}
    assert pairs == {("acct-a", "acct-b"), ("acct-a", "acct-c"), ("acct-b", "acct-c")}
    assert set(data.snippets) == {"r-0", "r-1", "r-2", "r-9"}
    assert data.accounts.num_rows == 3 and data.case_files == {}
    html = render_report(data)
    assert "100 % of this campaign&#39;s traffic arrived from addresses in AS7922" in html
    assert "pivot to model-new" in html


def test_report_command_writes_the_page_and_fails_cleanly(tmp_path: Path) -> None:
    logdir, outdir = _tiny_log(tmp_path)
    runner = CliRunner()
    ok = runner.invoke(app, ["report", str(logdir), str(outdir)])
    assert ok.exit_code == 0, ok.output
    assert (outdir / "report.html").read_text().startswith("<!DOCTYPE html>")
    (outdir / "campaigns.json").unlink()
    bad = runner.invoke(app, ["report", str(logdir), str(outdir)])
    assert bad.exit_code == 2
    text = bad.output.replace("\n", "")  # rich wraps at the terminal width, even inside words
    assert "campaigns.json" in text and "run `detect` first" in text


@pytest.mark.parametrize("broken", ["{not json", '{"run": {}}'])
def test_broken_campaigns_file_is_named(tmp_path: Path, broken: str) -> None:
    logdir, outdir = _tiny_log(tmp_path)
    (outdir / "campaigns.json").write_text(broken)
    with pytest.raises(Exception, match=r"campaigns\.json"):
        report_data_from_outputs(logdir, outdir)
