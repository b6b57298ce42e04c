"""Server-side SVG charts for the auditor pages: a token's uses per day, allowed vs denied.

Plain SVG text, no script and no style sheet of its own (the page's Content-Security-Policy allows neither
inline), so it renders the same with JavaScript off. Accessible: ``role="img"`` labelled by its ``<title>``
and ``<desc>`` (the totals in words), both axes labelled, every day's bar with its own ``<title>``, and the
two series told apart by a pattern and the legend's words as well as by colour. Every piece of text is
escaped here; the result is ``Markup`` so the template inserts it as it is.

Counts are Python integers all the way to the pixel: a day with 10**18 uses draws as tall as the scale says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from html import escape
from typing import Final, Protocol

from markupsafe import Markup

WIDTH: Final = 760
HEIGHT: Final = 300
_LEFT: Final = 84  # room for the y tick labels and the rotated y-axis title
_RIGHT: Final = 16
_TOP: Final = 40  # room for the legend
_BOTTOM: Final = 56  # room for the x tick labels and the x-axis title
PLOT_WIDTH: Final = WIDTH - _LEFT - _RIGHT
PLOT_HEIGHT: Final = HEIGHT - _TOP - _BOTTOM
_MAX_BAR_WIDTH: Final = 48
_MAX_INTERVALS: Final = 5  # y-axis intervals at most
_MAX_DAY_LABELS: Final = 8
ALLOWED_COLOUR: Final = "#2f7d4a"
DENIED_COLOUR: Final = "#c0341d"


class DayCounts(Protocol):
    """One day of the series: its allowed and denied counts."""

    @property
    def day(self) -> date: ...
    @property
    def allowed(self) -> int: ...
    @property
    def denied(self) -> int: ...


@dataclass(frozen=True)
class Scale:
    """The y axis: from 0 to ``top`` in steps of ``step`` (1, 2 or 5 times a power of ten)."""

    top: int
    step: int

    @property
    def ticks(self) -> list[int]:
        return list(range(0, self.top + 1, self.step))


def scale_for(maximum: int) -> Scale:
    """The smallest "nice" axis holding ``maximum`` in at most five intervals (integers only: no float
    rounding, whatever the size)."""
    if maximum <= 0:
        return Scale(1, 1)
    magnitude = 1
    while True:
        for factor in (1, 2, 5):
            step = factor * magnitude
            intervals = -(-maximum // step)
            if intervals <= _MAX_INTERVALS:
                return Scale(intervals * step, step)
        magnitude *= 10


_UNITS: Final = ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "k"))


def compact(count: int) -> str:
    """A tick label that fits: 950, 1.5k, 20M, 3T; beyond a thousand trillion, scientific (1.2e+18)."""
    if count >= 10**15:
        return f"{count:.1e}"
    for size, unit in _UNITS:
        if count >= size:
            whole, rest = divmod(count * 10 // size, 10)
            return f"{whole}.{rest}{unit}" if rest and whole < 100 else f"{whole}{unit}"
    return str(count)


def _number(value: float) -> str:
    """A coordinate, short: at most two decimals, no trailing zeros."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _day_text(day: date) -> str:
    return day.isoformat()


def _uses(count: int) -> str:
    return f"{count:,} use" if count == 1 else f"{count:,} uses"


def _summary(days: Sequence[DayCounts]) -> str:
    if not days:
        return "No days to show."
    allowed = sum(each.allowed for each in days)
    denied = sum(each.denied for each in days)
    span = f"from {_day_text(days[0].day)} to {_day_text(days[-1].day)} (UTC)"
    if len(days) == 1:
        span = f"on {_day_text(days[0].day)} (UTC)"
    if allowed + denied == 0:
        return f"No recorded uses {span}."
    busiest = max(days, key=lambda each: (each.allowed + each.denied, each.day))
    return (
        f"{_uses(allowed + denied)} {span}: {allowed:,} allowed, {denied:,} denied. "
        f"Busiest day: {_day_text(busiest.day)} with {busiest.allowed:,} allowed and {busiest.denied:,} denied."
    )


def uses_per_day_svg(days: Sequence[DayCounts], *, title: str, chart_id: str = "uses-chart") -> Markup:
    """A stacked bar per day (allowed below, denied above), oldest day on the left.

    ``days`` is the whole period, days without uses included (with zeros): the x axis is the days given.
    ``chart_id`` prefixes the ids inside the SVG (unique on the page).
    """
    ident = escape(chart_id)
    scale = scale_for(max((each.allowed + each.denied for each in days), default=0))
    slot = PLOT_WIDTH / max(len(days), 1)
    bar_width = min(slot * 0.8, _MAX_BAR_WIDTH)
    baseline = _TOP + PLOT_HEIGHT

    def height(count: int) -> float:
        return count * PLOT_HEIGHT / scale.top

    parts: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{ident}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-labelledby="{ident}-title {ident}-desc">',
        f'<title id="{ident}-title">{escape(title)}</title>',
        f'<desc id="{ident}-desc">{escape(_summary(days))}</desc>',
        "<defs>",
        f'<pattern id="{ident}-denied" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)">',
        f'<rect width="6" height="6" fill="{DENIED_COLOUR}"/>',
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#ffffff" stroke-width="2" stroke-opacity="0.6"/>',
        "</pattern>",
        "</defs>",
    ]
    # Legend: words beside each swatch, so the series never rest on colour alone.
    parts += [
        '<g class="chart-legend" font-size="12" fill="#333333">',
        f'<rect x="{_LEFT}" y="12" width="12" height="12" fill="{ALLOWED_COLOUR}"/>',
        f'<text x="{_LEFT + 18}" y="22">Allowed</text>',
        f'<rect x="{_LEFT + 90}" y="12" width="12" height="12" fill="url(#{ident}-denied)"/>',
        f'<text x="{_LEFT + 108}" y="22">Denied</text>',
        "</g>",
    ]
    # The y axis: gridlines, tick labels, title.
    parts.append('<g class="chart-y-axis" font-size="11" fill="#333333">')
    for tick in scale.ticks:
        y = _number(baseline - height(tick))
        parts.append(
            f'<line x1="{_LEFT}" y1="{y}" x2="{WIDTH - _RIGHT}" y2="{y}" stroke="#dddddd" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{_LEFT - 6}" y="{y}" text-anchor="end" dominant-baseline="middle">'
            f"{escape(compact(tick))}</text>"
        )
    middle = _number(_TOP + PLOT_HEIGHT / 2)
    parts.append(
        f'<text class="chart-axis-title" x="16" y="{middle}" text-anchor="middle" '
        f'transform="rotate(-90 16 {middle})" font-size="12">Uses per day</text>'
    )
    parts.append("</g>")
    # The bars.
    parts.append('<g class="chart-bars">')
    for index, each in enumerate(days):
        if each.allowed + each.denied == 0:
            continue
        x = _LEFT + index * slot + (slot - bar_width) / 2
        allowed_height = height(each.allowed)
        denied_height = height(each.denied)
        parts.append(
            f"<g><title>{escape(_day_text(each.day))}: {each.allowed:,} allowed, {each.denied:,} denied</title>"
        )
        if each.allowed:
            parts.append(
                f'<rect class="bar-allowed" x="{_number(x)}" y="{_number(baseline - allowed_height)}" '
                f'width="{_number(bar_width)}" height="{_number(allowed_height)}" fill="{ALLOWED_COLOUR}"/>'
            )
        if each.denied:
            parts.append(
                f'<rect class="bar-denied" x="{_number(x)}" '
                f'y="{_number(baseline - allowed_height - denied_height)}" width="{_number(bar_width)}" '
                f'height="{_number(denied_height)}" fill="url(#{ident}-denied)"/>'
            )
        parts.append("</g>")
    parts.append("</g>")
    # The x axis: the baseline, some day labels, title.
    parts.append('<g class="chart-x-axis" font-size="11" fill="#333333">')
    parts.append(
        f'<line x1="{_LEFT}" y1="{baseline}" x2="{WIDTH - _RIGHT}" y2="{baseline}" stroke="#666666" '
        'stroke-width="1"/>'
    )
    every = -(-len(days) // _MAX_DAY_LABELS) if days else 1
    for index, each in enumerate(days):
        if index % every:
            continue
        centre = _number(_LEFT + index * slot + slot / 2)
        parts.append(
            f'<text x="{centre}" y="{baseline + 16}" text-anchor="middle">{escape(each.day.strftime("%b %-d"))}</text>'
        )
    if not any(each.allowed + each.denied for each in days):
        parts.append(
            f'<text class="chart-empty" x="{_number(_LEFT + PLOT_WIDTH / 2)}" y="{_number(_TOP + PLOT_HEIGHT / 2)}" '
            'text-anchor="middle" font-size="13">No recorded uses in this period</text>'
        )
    parts.append(
        f'<text class="chart-axis-title" x="{_number(_LEFT + PLOT_WIDTH / 2)}" y="{HEIGHT - 8}" '
        'text-anchor="middle" font-size="12">Day (UTC)</text>'
    )
    parts.append("</g>")
    parts.append("</svg>")
    # Every piece of text above went through ``escape``; the rest is this module's own markup.
    return Markup("".join(parts))  # noqa: S704
