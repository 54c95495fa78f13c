"""Figures of the reports, written as PNG files by the CLI's --plot and embedded as SVG in the
dashboard's pages: one drawing per report, two ways out. matplotlib is imported on first use."""
from __future__ import annotations

import io


def new(width: float, height: float):
    """(figure, axes) on the Agg backend: no display, safe in a server's threads."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # not pyplot: its global state is not thread-safe

    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot()


def save(fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def svg(fig) -> str:
    """The figure as an inline <svg> element."""
    buf = io.StringIO()
    fig.tight_layout()
    fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg"):]
