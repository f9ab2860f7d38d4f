"""The bar chart of ``--plot``."""

from __future__ import annotations

from collections.abc import Sequence

from jaxlstm.bench.report import Row


def write_plot(rows: Sequence[Row], path: str, *, title: str) -> None:
    """Grouped bar chart of the medians (log scale, p10-p90 whiskers), one group per
    config and pass, one bar per system, saved as a PNG at ``path``."""
    from matplotlib.figure import Figure

    timed = [r for r in rows if r.median_ms is not None]
    groups = list(dict.fromkeys((r.config, r.pass_name) for r in timed))
    systems = list(dict.fromkeys(r.system for r in timed))
    width = 0.8 / len(systems)
    fig = Figure(figsize=(max(6.0, 1.2 * len(groups)), 4.5), layout="constrained")
    ax = fig.subplots()
    for k, system in enumerate(systems):
        mine = {(r.config, r.pass_name): r for r in timed if r.system == system}
        xs = [g for g, key in enumerate(groups) if key in mine]
        rs = [mine[groups[g]] for g in xs]
        ax.bar(
            [g + (k - (len(systems) - 1) / 2) * width for g in xs],
            [r.median_ms for r in rs],
            width,
            yerr=[[r.median_ms - r.p10_ms for r in rs], [r.p90_ms - r.median_ms for r in rs]],
            label=system,
        )
    ax.set_xticks(range(len(groups)), [f"{c}\n{p}" for c, p in groups], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("median ms (p10-p90), lower is faster")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
