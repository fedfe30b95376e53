"""The simulator: determinism, labels consistent with traffic, contract validity, knob validation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from distillguard.core.errors import ConfigError
from distillguard.core.schema import EXCHANGE_SCHEMA
from distillguard.ingest import load_log
from distillguard.simulate import (
    CAMPAIGNS,
    KNOB_NAMES,
    SimulationSummary,
    parse_sets,
    resolve,
    simulate,
)

BENIGN_PERSONAS = {
    "casual", "developer", "vpn_user", "university_class", "corporate", "saas_backend",
    "coding_agent", "enterprise_batch", "reseller", "eval_lab",
}  # fmt: skip
ATTACK_PERSONAS = {"hydra_operator", "reasoning_harvester", "pivot_operator", "varied_operator"}


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(tiny_run: SimulationSummary, tmp_path: Path) -> None:
    again = simulate("default", "tiny", 7, tmp_path / "again")
    first, second = _hashes(tiny_run.out), _hashes(again.out)
    assert set(first) == {"exchanges.parquet", "accounts.parquet", "ip_intel.csv", "labels.csv"}
    assert first == second


def test_different_seed_gives_different_traffic(
    tiny_run: SimulationSummary, tmp_path: Path
) -> None:
    other = simulate("default", "tiny", 8, tmp_path / "other")
    first, second = _hashes(tiny_run.out), _hashes(other.out)
    assert all(first[name] != second[name] for name in first)


def test_output_validates_under_the_contract(tiny_dir: Path) -> None:
    log = load_log(tiny_dir)
    assert log.labels is not None and log.ip_intel is not None


def test_exchanges_schema_and_unique_request_ids(tiny_run: SimulationSummary) -> None:
    table = pq.read_table(tiny_run.out / "exchanges.parquet")
    assert table.schema.equals(EXCHANGE_SCHEMA)
    assert table.num_rows == tiny_run.exchanges > 5000
    assert pc.count_distinct(table["request_id"]).as_py() == table.num_rows
    ts = table["ts"].to_numpy()
    assert (ts[1:] >= ts[:-1]).all(), "exchanges are written in time order"


def test_labels_consistent_with_traffic(tiny_dir: Path) -> None:
    con = duckdb.connect()
    ex, acc, lab = (
        str(tiny_dir / n) for n in ("exchanges.parquet", "accounts.parquet", "labels.csv")
    )
    orphans = con.sql(
        f"select count(distinct e.account_id) from '{ex}' e "
        f"left join read_csv('{lab}') l using (account_id) left join '{acc}' a using (account_id) "
        "where l.account_id is null or a.account_id is null"
    ).fetchone()
    assert orphans == (0,)
    labels = pacsv.read_csv(lab).to_pylist()
    assert len({r["account_id"] for r in labels}) == len(labels)
    for row in labels:
        if row["campaign"]:
            assert row["label"] == "attack" and row["persona"] in ATTACK_PERSONAS, row
        else:
            assert row["label"] == "benign" and row["persona"] in BENIGN_PERSONAS, row
    assert {r["campaign"] for r in labels if r["campaign"]} == set(CAMPAIGNS)
    assert {r["persona"] for r in labels} == BENIGN_PERSONAS | ATTACK_PERSONAS
    attack = sum(r["label"] == "attack" for r in labels)
    assert 0.01 < attack / len(labels) < 0.15, "attackers are a few percent of accounts"


def test_personas_look_like_what_docs_say(tiny_dir: Path) -> None:
    con = duckdb.connect()
    rows = con.sql(
        f"select persona, count(distinct client_ip) ips, count(distinct account_id) accts, "
        f"count(distinct end_user_id) eus, avg(tools_count) tools, count(distinct system_prompt_sha256) sp "
        f"from '{tiny_dir / 'exchanges.parquet'}' join read_csv('{tiny_dir / 'labels.csv'}') using (account_id) "
        "group by persona"
    ).fetchall()
    by = {r[0]: r[1:] for r in rows}
    assert by["university_class"][0] <= 2 < by["university_class"][1], (
        "a class behind one campus NAT"
    )
    assert by["saas_backend"][2] > 100 and by["saas_backend"][4] == 1, (
        "many end users, one system prompt"
    )
    assert by["coding_agent"][3] > 5, "agentic requests carry tools"
    assert by["hydra_operator"][0] > 50, "residential proxy exits"


def test_pivot_moves_to_new_model_fast(tmp_path: Path) -> None:
    run = simulate("pivot", "tiny", 1, tmp_path / "pivot")
    con = duckdb.connect()
    release = run.release_ts
    share = dict(
        con.sql(
            f"select label, avg((model = 'nova-4-pro')::int) from '{run.out / 'exchanges.parquet'}' "
            f"join read_csv('{run.out / 'labels.csv'}') using (account_id) "
            f"where ts between timestamptz '{release}' + interval 6 hour and timestamptz '{release}' + interval 24 hour "
            "group by label"
        ).fetchall()
    )
    assert share["attack"] > 0.35 > 0.1 > share["benign"]


def test_knobs_change_the_traffic(tmp_path: Path) -> None:
    run = simulate("june2026", "tiny", 2, tmp_path / "capped",
                   {"june2026.volume_cap": "5", "june2026.distinct_cards": "true", "june2026.accounts": "12"})  # fmt: skip
    con = duckdb.connect()
    per_day = con.sql(
        f"select max(n) from (select account_id, ts::date d, count(*) n from '{run.out / 'exchanges.parquet'}' "
        f"join read_csv('{run.out / 'labels.csv'}') using (account_id) where label = 'attack' group by 1, 2)"
    ).fetchone()
    assert per_day is not None and per_day[0] <= 5
    cards = con.sql(
        f"select count(*), count(distinct payment_fingerprint) from '{run.out / 'accounts.parquet'}' "
        f"join read_csv('{run.out / 'labels.csv'}') using (account_id) where label = 'attack'"
    ).fetchone()
    assert cards == (12, 12)


def test_a_campaign_can_start_later_in_the_window(tmp_path: Path) -> None:
    con = duckdb.connect()

    def first_day(start_day: str) -> tuple[int, int]:
        run = simulate("june2026", "tiny", 2, tmp_path / f"start{start_day}",
                       {"june2026.start_day": start_day, "june2026.accounts": "6"})  # fmt: skip
        row = con.sql(
            f"select min(ts)::date - (select min(ts)::date from '{run.out / 'exchanges.parquet'}'), "
            f"count(*) from '{run.out / 'exchanges.parquet'}' "
            f"join read_csv('{run.out / 'labels.csv'}') using (account_id) where label = 'attack'"
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    # Three days at the tiny scale: every account starts on day 0, or two days later.
    (day0, n0), (day2, n2) = first_day("0"), first_day("2")
    assert (day0, day2) == (0, 2)
    assert 0 < n2 < n0


def test_unknown_knob_lists_valid_keys() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown setting 'june2026\.speed'.*june2026\.cover_traffic"
    ):
        resolve("default", {"june2026.speed": "1"})
    with pytest.raises(ConfigError, match="no campaigns"):
        resolve("benign", {"june2026.rate": "1"})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("june2026.cover_traffic", "1.5", "must be between 0 and 1"),
        ("june2026.rate", "fast", "expected a number"),
        ("june2026.accounts", "2.5", "expected an integer"),
        ("june2026.distinct_cards", "maybe", "expected true or false"),
        ("june2026.volume_cap", "-1", "must be >= 0"),
        ("june2026.start_day", "-2", "must be >= 0"),
    ],
)
def test_bad_knob_values_are_rejected(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve("default", {key: value})


def test_overrides_apply_and_parse() -> None:
    knobs = resolve("low-and-slow", parse_sets(["june2026.cover_traffic=0.4"]))
    assert knobs["june2026"].cover_traffic == 0.4
    assert set(KNOB_NAMES) >= {"proxy_rotation", "paraphrase", "timing_jitter", "account_age_days"}
    with pytest.raises(ConfigError, match=r"expected campaign\.knob=value"):
        parse_sets(["june2026.rate"])


def test_unknown_scenario_and_scale(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown scenario"):
        simulate("nope", "tiny", 1, tmp_path / "x")
    with pytest.raises(ConfigError, match="unknown scale"):
        simulate("default", "huge", 1, tmp_path / "x")
    assert not (tmp_path / "x").exists()
