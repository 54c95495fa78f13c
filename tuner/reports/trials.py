"""A key's trials on one plot (the dashboard's key page): every measured time in the order it was
stored, one colour per stack, failures marked along the top, the current bests as lines."""
from __future__ import annotations


def figure(view: dict):
    """view: tuner.queries.key_page's answer."""
    from tuner.reports import figures

    fig, ax = figures.new(8, 3.6)
    trials = view["trials"]
    stacks = sorted({(t["device_class"], t["fingerprint"]) for t in trials})
    ok = [t for t in trials if t["status"] == "ok" and t["median_ms"] is not None]
    top = max((t["median_ms"] for t in ok), default=1.0)
    # gid: the <g id> of the points in the SVG, apart from the legend's copies
    for i, (dc, fp) in enumerate(stacks):
        mine = [t for t in ok if (t["device_class"], t["fingerprint"]) == (dc, fp)]
        ax.scatter([t["n"] for t in mine], [t["median_ms"] for t in mine], s=14, label=f"{dc} / {fp}",
                   gid=f"trials-ok-{i}")
    failed = [t for t in trials if t["status"] not in ("ok", "invalid")]
    if failed:
        ax.scatter([t["n"] for t in failed], [top * 1.05] * len(failed), marker="x", color="red", s=20,
                   label="failed (compile error, wrong result, timeout, crash)", gid="trials-failed")
    for b in view["current"]:
        ax.axhline(b["median_ms"], linestyle="--", linewidth=1, color="black")
        ax.annotate(f"best {b['median_ms']:.4g} ms ({b['device_class']} / {b['fingerprint']})",
                    (0, b["median_ms"]), xytext=(2, 3), textcoords="offset points", fontsize=7)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (in the order stored)")
    ax.set_ylabel("median ms")
    if stacks or failed:
        ax.legend(fontsize=7, loc="upper right")
    return fig
