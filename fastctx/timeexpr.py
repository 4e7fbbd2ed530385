"""Dates a question names in its own words ("on 5 Jan 2024", "10.01.2024", "in March 2023",
"the spring of 2024", "before December 23rd, 2023"), as UTC time intervals.

The engine uses them as a soft prior on hits (`AnswerParams.date_weight`): a question that names
a day is most likely about what happened that day or close to it, and never made a hard filter
of it, since people misremember dates and events are logged a day late. Only absolute dates are
read: "yesterday" or "last week" need a "now" the index does not have.

Formats: day month year in either order with month names or abbreviations and optional
ordinals ("5 Jan 2024", "January 6 2024", "December 23rd, 2023", "the 17th of January, 2024");
numeric dates "DD.MM.YYYY" (day first, as the dotted form is written), "M/D/YYYY" (month first)
and ISO "YYYY-MM-DD"; "Month YYYY"; seasons ("spring of 2024", "winter 2021 - 2022", northern
hemisphere; "winter 2024" is December 2023 to February 2024); "first/second/third/last week of ..."; and a bare year after "in", "during",
"since", "of" or "throughout". "before X" / "after X" turn X into the 90 days before / after it.
"""
from __future__ import annotations

import calendar
import re
from datetime import datetime, timezone

DAY = 86_400
_MONTHS = {m.lower(): i for i, m in enumerate(calendar.month_name) if m}
_MONTHS.update({m.lower(): i for i, m in enumerate(calendar.month_abbr) if m})
_MONTHS["sept"] = 9
_MON = r"(?P<mon>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_MON2 = _MON.replace("?P<mon>", "?P<mon2>")
_DAYN = r"(?P<day>[0-3]?\d)(?:st|nd|rd|th)?"
_DAYN2 = _DAYN.replace("?P<day>", "?P<day2>")
_YEAR = r"(?P<year>(?:19|20)\d\d)"
_SEASONS = {"spring": (3, 5), "summer": (6, 8), "fall": (9, 11), "autumn": (9, 11), "winter": (12, 2)}
_WEEKS = {"first": 0, "second": 1, "third": 2, "fourth": 3}
_PATTERNS = [
    ("dmy", re.compile(r"\b(?:the\s+)?" + _DAYN + r"(?:\s+of)?\s+" + _MON + r",?\s+" + _YEAR + r"\b", re.I)),
    ("mdy", re.compile(r"\b" + _MON2 + r"\s+(?:the\s+)?" + _DAYN2 + r",?\s+" + _YEAR + r"\b", re.I)),
    ("dotted", re.compile(r"\b(?P<a>[0-3]?\d)\.(?P<b>[01]?\d)\.(?P<year>(?:19|20)\d\d)\b")),
    ("slashed", re.compile(r"\b(?P<b>[01]?\d)/(?P<a>[0-3]?\d)/(?P<year>(?:19|20)\d\d)\b")),
    ("iso", re.compile(r"\b(?P<year>(?:19|20)\d\d)-(?P<b>[01]\d)-(?P<a>[0-3]\d)\b")),
    ("week", re.compile(r"\b(?P<nth>first|second|third|fourth|last)\s+week\s+of\s+(?:" + _MON + r"\s+)?"
                        + _YEAR + r"\b", re.I)),
    ("season", re.compile(r"\b(?P<season>spring|summer|fall|autumn|winter)(?:\s+break)?(?:\s+of)?\s+"
                          + _YEAR + r"(?:\s*[-/]\s*(?P<year2>(?:19|20)\d\d))?\b", re.I)),
    ("month", re.compile(r"\b" + _MON + r",?\s+(?:of\s+)?" + _YEAR + r"\b", re.I)),
    ("year", re.compile(r"\b(?:in|during|since|of|throughout)\s+" + _YEAR + r"\b", re.I)),
]
_BEFORE = re.compile(r"\b(?:before|until|prior\s+to|by)\s+(?:the\s+)?$", re.I)
_AFTER = re.compile(r"\b(?:after|since|following)\s+(?:the\s+)?$", re.I)
_WINDOW_DAYS = 90


def _ts(y: int, m: int, d: int) -> int | None:
    try:
        return int(datetime(y, m, d, tzinfo=timezone.utc).timestamp())
    except ValueError:
        return None


def _month_span(y: int, m: int) -> tuple[int, int]:
    return _ts(y, m, 1), _ts(y, m, calendar.monthrange(y, m)[1]) + DAY - 1


def _interval(kind: str, g: dict) -> tuple[int, int] | None:
    """The [start, end] seconds a match names, or None when it is no real date (31 Feb)."""
    year = int(g["year"])
    if kind in ("dmy", "mdy"):
        mon = _MONTHS[(g.get("mon") or g.get("mon2")).lower()]
        t = _ts(year, mon, int(g.get("day") or g.get("day2")))
        return None if t is None else (t, t + DAY - 1)
    if kind in ("dotted", "slashed", "iso"):
        t = _ts(year, int(g["b"]), int(g["a"]))
        return None if t is None else (t, t + DAY - 1)
    if kind == "month":
        return _month_span(year, _MONTHS[g["mon"].lower()])
    if kind == "year":
        return _ts(year, 1, 1), _ts(year + 1, 1, 1) - 1
    if kind == "season":
        first, last = _SEASONS[g["season"].lower()]
        if first > last:   # winter: "winter 2021 - 2022" from December 2021, "winter 2024" from December 2023
            y0 = year if g.get("year2") else year - 1
            return _ts(y0, 12, 1), _month_span(y0 + 1, last)[1]
        return _ts(year, first, 1), _month_span(year, last)[1]
    if kind == "week":
        lo, hi = _month_span(year, _MONTHS[g["mon"].lower()]) if g.get("mon") else (
            _ts(year, 1, 1), _ts(year + 1, 1, 1) - 1)
        if g["nth"].lower() == "last":
            return hi - 7 * DAY + 1, hi
        start = lo + 7 * DAY * _WEEKS[g["nth"].lower()]
        return start, start + 7 * DAY - 1
    return None


def date_intervals(text: str | None) -> list[tuple[int, int]]:
    """The [start, end] UTC second intervals of the absolute dates `text` names, in text order;
    "before X" / "after X" widen to the 90 days before / after X. Empty when none."""
    if not text:
        return []
    taken: list[tuple[int, int]] = []   # character spans already read (a day inside a month)
    found: list[tuple[int, tuple[int, int]]] = []
    for kind, pat in _PATTERNS:
        for m in pat.finditer(text):
            if any(m.start() < e and s < m.end() for s, e in taken):
                continue
            iv = _interval(kind, m.groupdict())
            if iv is None:
                continue
            taken.append((m.start(), m.end()))
            head = text[:m.start()]
            if _BEFORE.search(head):
                iv = (iv[0] - _WINDOW_DAYS * DAY, iv[0] - 1)
            elif _AFTER.search(head):
                iv = (iv[1] + 1, iv[1] + _WINDOW_DAYS * DAY)
            found.append((m.start(), iv))
    return [iv for _, iv in sorted(found)]
