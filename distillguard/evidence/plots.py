"""Inline SVG plots for the report: volume over time, capability and network mixes, linked-account graphs.

Every function returns an ``<svg>`` element as text, byte-identical for the same input:
matplotlib's ``svg.hashsalt`` is fixed per figure (and differs between figures so that
clip-path ids never collide in one page), the SVG date metadata is dropped, text stays
text (``svg.fonttype = none``), and graph layouts are seeded.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final

import igraph as ig
import matplotlib as mpl
import matplotlib.dates as mdates
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import PathPatch
from matplotlib.path import Path as MplPath

#: Colours by network kind: consumer networks warm, hosting cool, anonymisers dark.
KIND_COLOURS: Final[Mapping[str, str]] = {
    "residential": "#e6550d",
    "mobile": "#fd8d3c",
    "business": "#74c476",
    "education": "#31a354",
    "datacenter": "#3182bd",
    "vpn": "#756bb1",
    "proxy": "#54278f",
    "tor": "#252525",
    "unknown": "#bdbdbd",
}
ACTION_COLOURS: Final[Mapping[str, str]] = {
    "allow": "#bdbdbd",
    "monitor": "#9ecae1",
    "throttle": "#fdae6b",
    "challenge": "#f16913",
    "suspend": "#a50f15",
}
EDGE_COLOURS: Final[Mapping[str, str]] = {
    "payment": "#a50f15",
    "template": "#6a51a3",
    "synchrony": "#238b45",
    "signup_wave": "#d94801",
    "ip": "#2171b5",
    "prefix": "#6baed6",
    "user_agent": "#737373",
    "model_pivot": "#e7298a",
    "system_prompt": "#6a51a3",
}
MODEL_COLOURS: Final = ("#a50f15", "#08519c", "#54278f", "#006d2c", "#d94801", "#252525")
BACKGROUND_COLOUR: Final = "#9e9e9e"
#: Drawing more than this many nodes or edges makes an unreadable hairball: keep the heaviest.
MAX_NODES: Final = 250
MAX_EDGES: Final = 3000


@contextmanager
def _style(salt: str) -> Iterator[None]:
    with mpl.rc_context(
        {
            "svg.hashsalt": f"distillguard:{salt}",
            "svg.fonttype": "none",
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    ):
        yield


def _svg(fig: Figure, title: str) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Title": title})
    text = buf.getvalue()
    start = text.index("<svg")
    # Width/height in pt make the figure ignore the page width; CSS sizes it instead.
    head_end = text.index(">", start)
    head = text[start:head_end]
    for attr in ("width", "height"):
        i = head.find(f' {attr}="')
        if i >= 0:
            j = head.index('"', i + len(attr) + 3)
            head = head[:i] + head[j + 1 :]
    return head + f' role="img" aria-label="{_attr(title)}"' + text[head_end:].rstrip() + "\n"


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def volume_plot(
    key: str,
    hours: Sequence[datetime],
    by_model: Mapping[str, Sequence[int]],
    background: Sequence[int],
    pivot: tuple[datetime, str] | None,
    title: str,
) -> str:
    """Campaign exchanges per hour stacked by model, against all other traffic (right axis)."""
    with _style(f"volume:{key}"):
        fig = Figure(figsize=(8.0, 2.6))
        ax = fig.add_subplot()
        bg = ax.twinx()
        x = np.asarray([h.replace(tzinfo=None) for h in hours], dtype="datetime64[ms]")
        bg.step(x, np.asarray(background, float), where="mid", color="#424242", lw=0.8, alpha=0.7,
                label="all other traffic (right axis)")  # fmt: skip
        bg.set_ylabel("other traffic / h", color="#616161")
        bg.spines["right"].set_visible(True)
        bg.set_ylim(bottom=0)
        models = sorted(by_model)
        ys = [np.asarray(by_model[m], float) for m in models]
        if ys:
            ax.stackplot(
                x, *ys, labels=models, step="mid",
                colors=[MODEL_COLOURS[i % len(MODEL_COLOURS)] for i in range(len(models))], alpha=0.85,
            )  # fmt: skip
        if pivot is not None:
            at = float(mdates.date2num(pivot[0].replace(tzinfo=None)))
            ax.axvline(at, color="#000", ls="--", lw=1)
            ax.annotate(f"pivot to {pivot[1]}", (at, 1.0),
                        xycoords=("data", "axes fraction"), xytext=(3, -10), textcoords="offset points")  # fmt: skip
        ax.set_ylabel("campaign exchanges / h")
        ax.set_ylim(bottom=0)
        handles = ax.get_legend_handles_labels()[0] + bg.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=8, frameon=False,
                  ncols=len(handles))  # fmt: skip
        fig.autofmt_xdate()
        fig.tight_layout()
        return _svg(fig, title)


def share_bars(
    key: str, shares: Mapping[str, float], colours: Mapping[str, str], title: str
) -> str:
    """One horizontal 100 % bar split by category, labelled with percentages."""
    with _style(f"bars:{key}"):
        fig = Figure(figsize=(4.2, 0.9 + 0.22 * len(shares)))
        ax = fig.add_subplot()
        items = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))
        names = [k for k, _ in items]
        vals = [v for _, v in items]
        pos = np.arange(len(items))[::-1]
        ax.barh(pos, vals, color=[colours.get(n, "#6baed6") for n in names])
        ax.set_yticks(pos, names)
        for p, v in zip(pos, vals, strict=True):
            ax.text(v + 0.01, p, f"{100 * v:.0f} %", va="center", fontsize=8)
        ax.set_xlim(0, 1.15)
        ax.set_xticks([])
        ax.spines["bottom"].set_visible(False)
        ax.set_title(title, fontsize=9, loc="left")
        fig.tight_layout()
        return _svg(fig, title)


def persona_bars(key: str, rows: Sequence[tuple[str, int, int]], title: str) -> str:
    """Per group: share of accounts flagged (bar) with ``flagged/total`` labels."""
    with _style(f"persona:{key}"):
        fig = Figure(figsize=(6.5, 0.8 + 0.24 * len(rows)))
        ax = fig.add_subplot()
        pos = np.arange(len(rows))[::-1]
        share = [f / t if t else 0.0 for _, t, f in rows]
        ax.barh(pos, share, color=["#a50f15" if s > 0.5 else "#fd8d3c" for s in share])
        ax.set_yticks(pos, [r[0] for r in rows])
        for p, (_, t, f), s in zip(pos, rows, share, strict=True):
            ax.text(s + 0.01, p, f"{f}/{t}", va="center", fontsize=8)
        ax.set_xlim(0, 1.2)
        ax.set_xlabel("share of accounts flagged (throttle or stronger)")
        ax.set_title(title, fontsize=9, loc="left")
        fig.tight_layout()
        return _svg(fig, title)


def graph_plot(
    key: str,
    nodes: Sequence[str],
    node_actions: Mapping[str, str],
    edges: Sequence[tuple[str, str, float, str]],
    title: str,
) -> str:
    """The linked-account graph: nodes coloured by action, edges by their strongest kind of link."""
    edges = sorted(edges, key=lambda e: (-e[2], e[0], e[1]))[:MAX_EDGES]
    if len(nodes) > MAX_NODES:
        degree: dict[str, float] = {}
        for a, b, w, _ in edges:
            degree[a] = degree.get(a, 0.0) + w
            degree[b] = degree.get(b, 0.0) + w
        nodes = sorted(nodes, key=lambda n: (-degree.get(n, 0.0), n))[:MAX_NODES]
    nodes = sorted(nodes)
    index = {n: i for i, n in enumerate(nodes)}
    kept = [e for e in edges if e[0] in index and e[1] in index]
    graph = ig.Graph(n=len(nodes), edges=[(index[a], index[b]) for a, b, _, _ in kept])
    weights = [w for _, _, w, _ in kept]
    # igraph draws its random start from Python's global RNG: seed a private one for this call.
    state: Any = random.Random(len(nodes) * 7919 + len(kept))
    ig.set_random_number_generator(state)
    try:
        layout = graph.layout_fruchterman_reingold(weights=weights or None, niter=500)
    finally:
        ig.set_random_number_generator(random)
    xy = np.asarray(layout.coords, float) if len(nodes) else np.zeros((0, 2))
    with _style(f"graph:{key}"):
        fig = Figure(figsize=(5.2, 4.4))
        ax = fig.add_subplot()
        ax.set_axis_off()
        top = max(weights, default=1.0) or 1.0
        kinds_seen = sorted({kind for _, _, _, kind in kept})
        # One path per (kind, width band), not one element per edge: small, fast SVG.
        bands: dict[tuple[str, int], list[tuple[np.ndarray, np.ndarray]]] = {}
        for a, b, w, kind in kept:
            bands.setdefault((kind, min(2, int(3 * w / top))), []).append(
                (xy[index[a]], xy[index[b]])
            )
        for (kind, band), segs in sorted(bands.items()):
            verts = np.asarray([p for seg in segs for p in seg], float)
            codes = np.tile([MplPath.MOVETO, MplPath.LINETO], len(segs))
            ax.add_patch(PathPatch(MplPath(verts, codes), fill=False, edgecolor=EDGE_COLOURS.get(kind, "#969696"),
                                   lw=0.4 + 0.6 * band, alpha=0.4, zorder=1))  # fmt: skip
        if len(nodes):
            actions = [node_actions.get(n, "allow") for n in nodes]
            ax.scatter(xy[:, 0], xy[:, 1], s=28, c=[ACTION_COLOURS.get(a, "#bdbdbd") for a in actions],
                       edgecolors="white", linewidths=0.5, zorder=2)  # fmt: skip
        handles = [
            mpl.lines.Line2D([], [], color=EDGE_COLOURS.get(k, "#969696"), lw=2, label=f"link: {k}")
            for k in kinds_seen
        ]
        handles += [
            mpl.lines.Line2D([], [], marker="o", ls="", color=ACTION_COLOURS[a], label=a)
            for a in sorted(
                {node_actions.get(n, "allow") for n in nodes}, key=list(ACTION_COLOURS).index
            )
        ]
        if handles:
            ax.legend(
                handles=handles,
                loc="upper left",
                bbox_to_anchor=(1.0, 1.0),
                fontsize=7,
                frameon=False,
            )
        ax.set_title(title, fontsize=9, loc="left")
        fig.tight_layout()
        return _svg(fig, title)
