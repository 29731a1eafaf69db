"""The reports' one chart: horizontal bars, drawn to a PNG and embedded in the page as a data URI.

Drawn on a matplotlib `Figure` rendered by Agg: no pyplot, so no global figure state and no display is
ever needed. The PNG carries no "Software" chunk, so it does not change with matplotlib's patch release.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

BLUE = "#4c72b0"


@dataclass(frozen=True)
class Image:
    """An image for a page: `<img src="{uri}" alt="{alt}">` (templates/macros.html)."""

    uri: str
    alt: str


def four_decimals(value: float) -> str:
    return f"{value:.4f}"


def _plot_text(text: str) -> str:
    # matplotlib reads $...$ as mathematics; labels and titles here are plain text.
    return text.replace("$", r"\$")


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    title: str,
    alt: str,
    *,
    colours: str | Sequence[str] = BLUE,
    value_text: Callable[[float], str] = four_decimals,
    inner: Sequence[float] | None = None,
    legend: tuple[str, str] = ("", ""),
) -> Image:
    """Horizontal bars, the first label at the top, each bar's value written at its end.

    `inner`, where given, is drawn in blue inside each bar (a part of the whole: the seconds a stage
    spent on its real work), with `legend` naming the whole bar and the part below the axes. Counts
    (all values ints) get whole-number ticks.
    """
    figure = Figure(figsize=(7.5, 0.38 * len(labels) + (1.4 if inner else 1.2)))
    axes = figure.add_subplot()
    positions = list(range(len(labels)))
    axes.barh(positions, values, color=colours, label=legend[0])
    if inner:
        axes.barh(positions, inner, color=BLUE, label=legend[1])
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8, frameon=False)
    if values and all(isinstance(value, int) for value in values):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # counted, never fractional
    axes.set_yticks(positions, labels=[_plot_text(label) for label in labels])
    axes.invert_yaxis()
    axes.set_title(_plot_text(title))
    top = max(values, default=0.0)
    axes.set_xlim(0, top * 1.18 if top > 0 else 1)  # room for the value written after the longest bar
    for position, value in zip(positions, values, strict=True):
        axes.text(value, position, f" {value_text(value)}", va="center", fontsize=8)
    axes.spines[["top", "right"]].set_visible(False)
    return Image(png_data_uri(figure), alt)


def png_data_uri(figure: Figure) -> str:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
