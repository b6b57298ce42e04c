"""The uses-per-day SVG chart (api/ui/charts.py): well-formed, accessible, script-free SVG whose bars are the
counts given, for empty periods, one day, 90 days and counts far beyond any float's exactness."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import date, timedelta

import pytest

from api.ui.charts import PLOT_HEIGHT, Scale, compact, scale_for, uses_per_day_svg

SVG = "{http://www.w3.org/2000/svg}"
START = date(2026, 1, 1)


@dataclass(frozen=True)
class Day:
    day: date
    allowed: int
    denied: int


def period(counts: list[tuple[int, int]]) -> list[Day]:
    return [Day(START + timedelta(days=index), *each) for index, each in enumerate(counts)]


def parse(days: list[Day], title: str = "Uses of ci") -> ET.Element:
    return ET.fromstring(str(uses_per_day_svg(days, title=title, chart_id="c")))


def bars(root: ET.Element, kind: str) -> list[ET.Element]:
    return [rect for rect in root.iter(f"{SVG}rect") if rect.get("class") == f"bar-{kind}"]


def texts(root: ET.Element) -> list[str]:
    return [element.text or "" for element in root.iter(f"{SVG}text")]


def test_the_chart_is_labelled_for_assistive_technology_and_has_no_script():
    root = parse(period([(3, 1), (0, 2)]))
    assert root.get("role") == "img"
    assert root.get("aria-labelledby") == "c-title c-desc"
    title = root.find(f"{SVG}title")
    desc = root.find(f"{SVG}desc")
    assert title is not None and title.get("id") == "c-title" and title.text == "Uses of ci"
    assert desc is not None and desc.get("id") == "c-desc"
    assert desc.text == (
        "6 uses from 2026-01-01 to 2026-01-02 (UTC): 3 allowed, 3 denied. "
        "Busiest day: 2026-01-01 with 3 allowed and 1 denied."
    )
    assert {"Uses per day", "Day (UTC)", "Allowed", "Denied"} <= set(texts(root))
    markup = str(uses_per_day_svg(period([(3, 1)]), title="t"))
    assert "<script" not in markup and "style=" not in markup
    assert re.search(r"\son[a-z]+=", markup) is None  # no event handler attributes


def test_each_bar_is_as_tall_as_its_count_on_the_scale_and_says_its_numbers():
    root = parse(period([(4, 0), (2, 2), (0, 0), (0, 1)]))
    allowed, denied = bars(root, "allowed"), bars(root, "denied")
    assert [float(rect.get("height", "")) for rect in allowed] == [PLOT_HEIGHT, PLOT_HEIGHT / 2]
    assert [float(rect.get("height", "")) for rect in denied] == [PLOT_HEIGHT / 2, PLOT_HEIGHT / 4]
    # denied sits on top of allowed, on the same x
    assert denied[0].get("x") == allowed[1].get("x")
    assert float(denied[0].get("y", "")) + float(denied[0].get("height", "")) == float(
        allowed[1].get("y", "")
    )
    tips = [
        group.findtext(f"{SVG}title")
        for group in root.iter(f"{SVG}g")
        if group.find(f"{SVG}rect") is not None
    ]
    assert "2026-01-02: 2 allowed, 2 denied" in tips and "2026-01-04: 0 allowed, 1 denied" in tips
    assert not any(tip and tip.startswith("2026-01-03") for tip in tips)  # a day without uses draws nothing


def test_a_period_without_any_use_says_so():
    root = parse(period([(0, 0)] * 30))
    assert bars(root, "allowed") == [] and bars(root, "denied") == []
    assert "No recorded uses in this period" in texts(root)
    desc = root.find(f"{SVG}desc")
    assert desc is not None and desc.text == "No recorded uses from 2026-01-01 to 2026-01-30 (UTC)."
    assert [text for text in texts(root) if text in ("0", "1")] == ["0", "1"]  # an axis from 0 to 1


def test_one_day():
    root = parse(period([(1, 0)]))
    (bar,) = bars(root, "allowed")
    assert float(bar.get("width", "")) <= 48  # one wide slot, a bar of readable width
    assert "Jan 1" in texts(root)
    desc = root.find(f"{SVG}desc")
    assert desc is not None and desc.text is not None and desc.text.startswith("1 use on 2026-01-01 (UTC)")


def test_ninety_days_have_ninety_slots_and_a_readable_number_of_day_labels():
    counts = [(day % 7, day % 3) for day in range(90)]
    root = parse(period(counts))
    drawn = {rect.get("x") for rect in bars(root, "allowed") + bars(root, "denied")}
    assert len(drawn) == sum(1 for each in counts if sum(each))
    labels = [text for text in texts(root) if text.startswith(("Jan", "Feb", "Mar"))]
    assert 2 <= len(labels) <= 8 and labels[0] == "Jan 1"
    xs = sorted(float(x) for x in drawn if x is not None)
    assert xs[0] >= 84 and xs[-1] <= 760 - 16  # inside the plot


def test_huge_counts_keep_exact_words_and_a_fitting_scale():
    huge = 10**18 + 7
    root = parse(period([(huge, 1), (1, 0)]))
    tips = [
        group.findtext(f"{SVG}title")
        for group in root.iter(f"{SVG}g")
        if group.find(f"{SVG}rect") is not None
    ]
    assert "2026-01-01: 1,000,000,000,000,000,007 allowed, 1 denied" in tips
    (tall, small) = bars(root, "allowed")
    assert 0 < float(tall.get("height", "")) <= PLOT_HEIGHT
    assert float(small.get("height", "")) == 0  # 1 in 10**18 rounds to nothing at this size
    assert max(len(text) for text in texts(root) if text[:1].isdigit()) <= 8  # tick labels stay short


def test_text_given_to_the_chart_is_escaped():
    root = parse(period([(1, 1)]), title='<script>alert("x")</script> & more')
    title = root.find(f"{SVG}title")
    assert title is not None and title.text == '<script>alert("x")</script> & more'
    assert "<script>" not in str(uses_per_day_svg(period([(1, 1)]), title="<script>"))
    assert 'id="a&quot;b-title"' in str(uses_per_day_svg(period([(1, 1)]), title="t", chart_id='a"b'))


@pytest.mark.parametrize(
    ("maximum", "scale"),
    [
        (0, Scale(1, 1)),
        (1, Scale(1, 1)),
        (5, Scale(5, 1)),
        (7, Scale(8, 2)),
        (11, Scale(15, 5)),
        (99, Scale(100, 20)),
        (10**18 + 1, Scale(15 * 10**17, 5 * 10**17)),
    ],
)
def test_the_scale_is_nice_and_holds_the_maximum(maximum: int, scale: Scale):
    assert scale_for(maximum) == scale
    assert scale.top >= maximum and len(scale.ticks) <= 6


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0"),
        (999, "999"),
        (1000, "1k"),
        (1500, "1.5k"),
        (999_999, "999k"),
        (2_500_000, "2.5M"),
        (7 * 10**9, "7B"),
        (10**12, "1T"),
        (10**18, "1.0e+18"),
    ],
)
def test_compact_tick_labels(count: int, text: str):
    assert compact(count) == text
