"""The evaluate and plot-traffic commands: outputs written, clean exit 2 on bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distillguard.cli import app
from distillguard.core.errors import ConfigError
from distillguard.evaluate.plot import parse_bin

runner = CliRunner()


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_evaluate_writes_json_and_markdown(
    make_log: Callable[..., Path], make_results: Callable[..., Path], tmp_path: Path
) -> None:
    logdir = make_log()
    resultdir = make_results(
        verdicts={"a1": "suspend", "b1": "throttle"}, decisions=[(2, "a1", "suspend")]
    )
    result = runner.invoke(app, ["evaluate", str(logdir), str(resultdir)])
    assert result.exit_code == 0, result.output
    assert "attack-account recall" in result.output
    data = json.loads((resultdir / "evaluation.json").read_text())
    assert data["headline"]["account_recall"] == pytest.approx(2 / 5)
    # a1 served at 0 and 1 only; everything else of c1 (a2, a3) is served
    assert data["replay"]["campaigns"]["c1"]["served"] == 2 + 3 + 2
    assert (resultdir / "evaluation.md").read_text().startswith("# distillguard evaluation")
    other = tmp_path / "elsewhere"
    assert (
        runner.invoke(app, ["evaluate", str(logdir), str(resultdir), "--out", str(other)]).exit_code
        == 0
    )
    assert (other / "evaluation.json").is_file()


def test_evaluate_without_labels_exits_2(
    make_log: Callable[..., Path], make_results: Callable[..., Path]
) -> None:
    result = runner.invoke(
        app, ["evaluate", str(make_log(labels=None)), str(make_results(verdicts={}))]
    )
    assert result.exit_code == 2
    assert "has no labels.csv: evaluation needs ground truth" in flat(result.output)


def test_evaluate_bad_verdicts_exits_2_naming_row(
    make_log: Callable[..., Path], make_results: Callable[..., Path]
) -> None:
    resultdir = make_results(verdicts={"a1": "obliterate"})
    result = runner.invoke(app, ["evaluate", str(make_log()), str(resultdir)])
    assert result.exit_code == 2
    assert "verdicts.jsonl, row 1, column 'action': 'obliterate' is not one of" in flat(
        result.output
    )


@pytest.mark.parametrize("by", ["persona", "label", "campaign"])
def test_plot_traffic_writes_a_png(make_log: Callable[..., Path], tmp_path: Path, by: str) -> None:
    png = tmp_path / "plots" / "traffic.png"
    result = runner.invoke(
        app, ["plot-traffic", str(make_log()), "--out", str(png), "--by", by, "--bin", "5min"]
    )
    assert result.exit_code == 0, result.output
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000
    assert [p.name for p in png.parent.iterdir()] == ["traffic.png"]  # no temporary left behind


def test_plot_traffic_log_y(make_log: Callable[..., Path], tmp_path: Path) -> None:
    png = tmp_path / "t.png"
    assert (
        runner.invoke(
            app, ["plot-traffic", str(make_log()), "--out", str(png), "--log-y"]
        ).exit_code
        == 0
    )
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_plot_traffic_without_labels_exits_2(make_log: Callable[..., Path], tmp_path: Path) -> None:
    png = tmp_path / "t.png"
    result = runner.invoke(app, ["plot-traffic", str(make_log(labels=None)), "--out", str(png)])
    assert result.exit_code == 2
    assert "has no labels.csv: the traffic plot needs ground truth" in flat(result.output)
    assert not png.exists()


def test_plot_traffic_bad_options_exit_2(make_log: Callable[..., Path], tmp_path: Path) -> None:
    logdir = make_log()
    for args in (["--by", "colour"], ["--bin", "fortnight"], ["--bin", "0h"]):
        result = runner.invoke(
            app, ["plot-traffic", str(logdir), "--out", str(tmp_path / "t.png"), *args]
        )
        assert result.exit_code == 2, args


def test_parse_bin() -> None:
    assert parse_bin("1h") == 3_600_000
    assert parse_bin("15min") == 900_000
    assert parse_bin(" 30s ") == 30_000
    assert parse_bin("2d") == 172_800_000
    with pytest.raises(ConfigError, match="positive duration"):
        parse_bin("1 fortnight")
