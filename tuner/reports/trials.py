"""A key's trials on one plot (the dashboard's key page): every measured time in the order it was
stored, one colour per stack, each stack's best so far as a step line, failures marked along the
top, the current bests as dashed lines named in the legend (labels drawn beside the lines printed
over each other when two stacks' bests were close). Times are drawn in µs when all are under
0.1 ms (display.time_axis). Each point's configuration and time go in `fig.point_titles`, which
the dashboard writes into the SVG as <title>s (a tooltip on hover)."""
from __future__ import annotations

from tuner.display import config_word, duration, time_axis


def figure(view: dict):
    """view: tuner.queries.key_page's answer (its trials: key_points')."""
    from tuner.reports import figures

    fig, ax = figures.new(9, 3.8)
    trials = view["trials"]
    stacks = sorted({(t["device_class"], t["fingerprint"]) for t in trials})
    ok = [t for t in trials if t["status"] == "ok" and t["median_ms"] is not None]
    factor, unit = time_axis([t["median_ms"] for t in ok] + [b["median_ms"] for b in view["current"]])
    top = max((t["median_ms"] for t in ok), default=1.0) * factor
    titles: dict[str, list[str]] = {}
    # gid: the <g id> of the points in the SVG, apart from the legend's copies; the points drawn
    # above the lines (zorder), which would otherwise take the pointer and hide their titles
    for i, (dc, fp) in enumerate(stacks):
        mine = [t for t in ok if (t["device_class"], t["fingerprint"]) == (dc, fp)]
        if not mine:
            continue
        points = ax.scatter([t["n"] for t in mine], [t["median_ms"] * factor for t in mine], s=14,
                            label=f"{dc} / {fp}", gid=f"trials-ok-{i}", zorder=3)
        titles[f"trials-ok-{i}"] = [f"trial {t['n']}: {config_word(t['config'])}, {duration(t['median_ms'])}"
                                    for t in mine]
        so_far, best = [], None
        for t in mine:
            best = t["median_ms"] if best is None else min(best, t["median_ms"])
            so_far.append(best * factor)
        ax.step([t["n"] for t in mine], so_far, where="post", linewidth=1, alpha=0.7,
                color=points.get_facecolor()[0], label=f"best so far, {dc} / {fp}", zorder=1)
    failed = [t for t in trials if t["status"] not in ("ok", "invalid")]
    if failed:
        ax.scatter([t["n"] for t in failed], [top * 1.05] * len(failed), marker="x", color="red", s=20,
                   label="failed (compile error, wrong result, timeout, crash)", gid="trials-failed", zorder=3)
        titles["trials-failed"] = [f"trial {t['n']}: {config_word(t['config'])}, {t['status']}"
                                   + (f": {t['message'][:120]}" if t.get("message") else "") for t in failed]
    for b in view["current"]:  # named in the legend, not beside the line: two close bests' labels overlapped
        ax.axhline(b["median_ms"] * factor, linestyle="--", linewidth=1, color="black", zorder=1,
                   label=f"stored best {duration(b['median_ms'])} ({b['device_class']} / {b['fingerprint']})")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (in the order stored)")
    ax.set_ylabel(f"median {unit}")
    if stacks or failed or view["current"]:
        # beside the axes, not over the points: one entry per line, so no two labels overlap
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.point_titles = titles
    return fig
