"""Server-rendered SVG charts for the dashboard: geometry here, markup in the templates.

No chart library and no script: the numbers become rectangles on the server, so the pages
keep a Content-Security-Policy without any script source.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# One colour per outcome, as the pages' legend shows them.
OUTCOME_COLOURS = {"APPROVE": "#2e7d32", "REVIEW": "#f9a825", "DECLINE": "#c62828"}


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    text: str
    anchor: str = "middle"


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    labels: list[Label]
    title: str


def stacked_hours(
    hours: list[datetime], per_outcome: dict[str, list[int]], width: int = 1200, height: int = 200
) -> Chart:
    """Decisions per hour, one column per hour, stacked by outcome."""
    left, bottom, top = 36, 24, 8
    plot_h = height - bottom - top
    totals = [sum(counts[i] for counts in per_outcome.values()) for i in range(len(hours))]
    peak = max([*totals, 1])
    step = (width - left) / max(len(hours), 1)
    bars, labels = [], [Label(left - 4, top + 10, str(peak), "end"),
                        Label(left - 4, top + plot_h, "0", "end")]  # fmt: skip
    for i, hour in enumerate(hours):
        base = top + plot_h
        for outcome, counts in per_outcome.items():
            if counts[i]:
                h = plot_h * counts[i] / peak
                base -= h
                bars.append(Bar(left + i * step + 1, base, step - 2, h,
                                OUTCOME_COLOURS.get(outcome, "#607d8b"),
                                f"{hour:%H}:00 {outcome}: {counts[i]}"))  # fmt: skip
        if i % 3 == 0:
            labels.append(Label(left + (i + 0.5) * step, height - 6, f"{hour:%H}h"))
    return Chart(width, height, bars, labels, "Decisions per hour by outcome (UTC)")


def horizontal(
    items: list[tuple[str, int]], title: str, colour: str = "#1e88e5", width: int = 360
) -> Chart:
    """One bar per named count, largest first (top reasons, busiest devices)."""
    row, label_w = 22, 150
    height = max(row * len(items), row) + 4
    peak = max([n for _, n in items] + [1])
    bars, labels = [], []
    for i, (name, count) in enumerate(items):
        w = (width - label_w - 40) * count / peak
        y = 2 + i * row
        bars.append(Bar(label_w, y, max(w, 1), row - 6, colour, f"{name}: {count}"))
        labels.append(Label(label_w - 6, y + row - 10, name[:22], "end"))
        labels.append(Label(label_w + w + 4, y + row - 10, str(count), "start"))
    return Chart(width, height, bars, labels, title)
