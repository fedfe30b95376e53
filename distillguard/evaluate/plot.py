"""Plot a labelled scenario's traffic over time: exchanges per time bin by persona, label or campaign."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from distillguard.core.atomic import write_bytes_atomic
from distillguard.core.errors import ConfigError
from distillguard.core.exchange_sql import ExchangeSource
from distillguard.evaluate.containment import query_exchanges
from distillguard.evaluate.logsource import open_log, require_labels

GroupBy = Literal["persona", "label", "campaign"]
GROUP_BY_CHOICES: tuple[str, ...] = ("persona", "label", "campaign")
UNLABELLED = "(unlabelled)"
#: More bins than this make an unreadable plot and a large pivot; ask for a coarser bin instead.
MAX_BINS = 20_000

ATTACK_COLOURS = (
    "#d62728",
    "#111111",
    "#9467bd",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
)
ATTACK_STYLES = ("-", "--", "-.", ":")

_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400, "day": 86400}


def parse_bin(text: str) -> int:
    """``"15min"``, ``"1h"``, ``"30s"``, ``"1d"`` → bin width in milliseconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-z]+)\s*", text.lower())
    if match is None or match.group(2) not in _UNITS or int(match.group(1)) == 0:
        raise ConfigError(f"bin {text!r} is not a positive duration such as 30s, 15min, 1h or 1d")
    return int(match.group(1)) * _UNITS[match.group(2)] * 1000


def group_expression(by: GroupBy) -> str:
    """SQL naming each exchange's series: attack traffic is split by campaign except ``--by label``."""
    if by == "label":
        return "coalesce(l.label, '(unlabelled)')"
    if by == "campaign":
        return "CASE WHEN l.label = 'attack' THEN 'attack: ' || l.campaign ELSE coalesce(l.label, '(unlabelled)') END"
    return "CASE WHEN l.label = 'attack' THEN 'attack: ' || l.campaign ELSE coalesce(l.persona, '(unlabelled)') END"


def traffic_bins(
    exchanges: ExchangeSource, labels: pl.DataFrame, by: GroupBy, bin_ms: int
) -> pl.DataFrame:
    """Exchanges per (bin_ms start, group): columns ``bin`` (epoch ms), ``group``, ``exchanges``."""
    if by not in GROUP_BY_CHOICES:
        raise ConfigError(f"--by must be one of {', '.join(GROUP_BY_CHOICES)}, got {by!r}")
    return query_exchanges(
        exchanges,
        f"""
        SELECT (epoch_ms(x.ts) // {int(bin_ms)}) * {int(bin_ms)} AS bin,
               {group_expression(by)} AS "group", count(*)::BIGINT AS exchanges
        FROM exchanges x
        LEFT JOIN labels l USING (account_id)
        GROUP BY ALL ORDER BY bin, "group"
        """,
        labels=labels,
    )


@dataclass(frozen=True)
class TrafficPlot:
    """What was plotted: series names (benign first, then attack) and the bin count."""

    path: Path
    series: list[str]
    bins: int
    exchanges: int


def render_traffic(
    bins: pl.DataFrame, bin_ms: int, *, title: str, log_y: bool = False
) -> tuple[bytes, list[str], int]:
    """PNG bytes of benign series as stacked areas and attack campaigns as bold lines on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    if bins.height == 0:
        starts = np.array([], dtype=np.int64)
        wide = pl.DataFrame()
    else:
        lo, hi = int(bins["bin"].min()), int(bins["bin"].max())  # type: ignore[arg-type]
        n_bins = (hi - lo) // bin_ms + 1
        if n_bins > MAX_BINS:
            raise ConfigError(
                f"{n_bins} bins of {bin_ms // 1000} s is too many to plot; choose a larger --bin"
            )
        starts = np.arange(lo, hi + bin_ms, bin_ms, dtype=np.int64)
        wide = (
            pl.DataFrame({"bin": starts})
            .join(bins.pivot(on="group", index="bin", values="exchanges"), on="bin", how="left")
            .fill_null(0)
        )
    groups = [c for c in wide.columns if c != "bin"]
    benign = sorted(g for g in groups if not g.startswith("attack"))
    attack = sorted(g for g in groups if g.startswith("attack"))
    times = starts.astype("datetime64[ms]")

    fig, ax = plt.subplots(figsize=(12, 6), dpi=110)
    # Benign traffic in pale tones underneath, attack campaigns as saturated lines on top,
    # so a campaign stands out whatever the benign mix looks like.
    if benign:
        colours = plt.get_cmap("Pastel2" if len(benign) <= 8 else "Set3")(
            np.arange(len(benign)) % 12
        )
        if log_y:  # stacking is meaningless on a log axis
            for name, colour in zip(benign, colours, strict=True):
                ax.plot(times, wide[name].to_numpy(), color=colour, linewidth=1.6, label=name)
        else:
            ax.stackplot(
                times, *(wide[g].to_numpy() for g in benign), labels=benign, colors=colours
            )
    for i, name in enumerate(attack):
        values = wide[name].to_numpy().astype(float)
        active = np.flatnonzero(values)
        if active.size:  # no line along zero before a campaign starts or after it ends
            values[: active[0]] = np.nan
            values[active[-1] + 1 :] = np.nan
        ax.plot(
            times,
            values,
            color=ATTACK_COLOURS[i % len(ATTACK_COLOURS)],
            linestyle=ATTACK_STYLES[(i // len(ATTACK_COLOURS)) % len(ATTACK_STYLES)],
            linewidth=2.4,
            label=name,
        )
    if log_y:
        ax.set_yscale("symlog", linthresh=1)
    ax.set_title(title)
    ax.set_ylabel(f"exchanges per {_bin_label(bin_ms)}")
    ax.set_xlabel("time (UTC)")
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=8,
            frameon=False,
            title="benign: " + ("lines" if log_y else "stacked") + "\nattack: bold lines",
            title_fontsize=8,
        )
    else:
        ax.text(0.5, 0.5, "no exchanges", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue(), benign + attack, len(starts)


def _bin_label(bin_ms: int) -> str:
    seconds = bin_ms // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def plot_traffic(
    logdir: Path,
    out: Path,
    *,
    by: GroupBy = "persona",
    bin_width: str = "1h",
    log_y: bool = False,
    config: Mapping[str, Any] | None = None,
) -> TrafficPlot:
    """Plot ``logdir``'s exchanges per time bin into the PNG ``out`` (written atomically).

    Needs labels.csv: the series are personas, labels or campaigns, which only it names.
    """
    bin_ms = parse_bin(bin_width)
    view = open_log(logdir, config)
    labels = require_labels(view, logdir, "the traffic plot")
    bins = traffic_bins(view.exchanges, labels, by, bin_ms)
    png, series, n_bins = render_traffic(
        bins,
        bin_ms,
        title=f"{logdir.name}: exchanges per {_bin_label(bin_ms)} by {by}",
        log_y=log_y,
    )
    write_bytes_atomic(out, png)
    return TrafficPlot(
        path=out, series=series, bins=n_bins, exchanges=int(bins["exchanges"].sum() or 0)
    )
