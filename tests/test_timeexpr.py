"""Dates named in a question's text (fastctx/timeexpr.py) and the engine's prior on them."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from fastctx import heads
from fastctx.timeexpr import DAY, date_intervals


def _day(y, m, d):
    t = int(datetime(y, m, d, tzinfo=timezone.utc).timestamp())
    return (t, t + DAY - 1)


def _span(a, b):
    return (_day(*a)[0], _day(*b)[1])


@pytest.mark.parametrize("text, want", [
    ("What kind of pasta did Kate make on 29 Dec 2023?", [_day(2023, 12, 29)]),
    ("What happened to Elise in the library on 5 January 2024?", [_day(2024, 1, 5)]),
    ("How many naps on January 6 2024?", [_day(2024, 1, 6)]),
    ("What happened on the 17th of January, 2024 with a cat?", [_day(2024, 1, 17)]),
    ("Where is Paola going on the 10th of February 2024?", [_day(2024, 2, 10)]),
    ("What did Kevin watch on the night of 10.01.2024?", [_day(2024, 1, 10)]),      # day first
    ("Released 1/10/2024 and 2024-03-05", [_day(2024, 1, 10), _day(2024, 3, 5)]),  # month first; ISO
    ("When Akib went on a hike in January 2024?", [_span((2024, 1, 1), (2024, 1, 31))]),
    ("Where does Kate plan to visit in the spring of 2024?", [_span((2024, 3, 1), (2024, 5, 31))]),
    ("Which country did Elise visit in winter 2021 - 2022?", [_span((2021, 12, 1), (2022, 2, 28))]),
    ("Which place did Elise visit in the first week of 2024?", [_span((2024, 1, 1), (2024, 1, 7))]),
    ("What football match did Kevin watch in 2017?", [_span((2017, 1, 1), (2017, 12, 31))]),
])
def test_absolute_dates_in_the_formats_people_write(text, want):
    assert date_intervals(text) == want


def test_before_and_after_turn_a_date_into_the_90_days_on_that_side():
    lo, hi = _day(2024, 1, 4)
    assert date_intervals("games watched before January 4th, 2024?") == [(lo - 90 * DAY, lo - 1)]
    assert date_intervals("what changed after 2024-01-04") == [(hi + 1, hi + 90 * DAY)]


@pytest.mark.parametrize("text", [None, "", "why did the payment retry fail", "release 2.0.1 on port 2024",
                                  "31.13.2024", "yesterday", "ticket PAY-2023"])
def test_no_absolute_date_means_no_interval(text):
    assert date_intervals(text) == []


def test_a_day_inside_a_month_phrase_is_read_once_and_an_impossible_day_leaves_the_month():
    assert date_intervals("on 5 Jan 2024") == [_day(2024, 1, 5)]
    assert date_intervals("on 31 Feb 2024") == [_span((2024, 2, 1), (2024, 2, 29))]


def test_the_engine_prior_is_one_on_the_named_day_and_halves_a_scale_away():
    lo, hi = _day(2024, 1, 5)
    times = np.array([lo + 3600, hi + 3 * DAY, lo - 6 * DAY, lo + 40 * DAY])
    got = heads.named_dates(times, [(lo, hi)], 3.0)
    assert np.allclose(got[:3], [1.0, 0.5, 1 / 3])
    assert got[3] < got[2]
    assert not heads.named_dates(times, [], 3.0).any()


def test_a_question_naming_a_day_gets_that_days_event_among_look_alikes(tmp_path):
    from conftest import event, write_corpus
    from fastctx.index import Index, build

    t0 = _day(2024, 1, 1)[0]
    recs = [event(i, time=t0 + 5 * i * DAY + 3600, kind="turn", tokens=10, entities=["conv:1"]) for i in range(20)]
    rng = np.random.default_rng(0)       # twenty turns about as like the question as each other
    topic = np.eye(64)[0]
    vecs = 0.6 * topic + rng.normal(size=(20, 64)) / 12
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    build(write_corpus(tmp_path / "c", recs, vecs), tmp_path / "i")
    idx = Index(tmp_path / "i")
    for i, day in ((0, "1 Jan 2024"), (2, "11 Jan 2024"), (5, "26.01.2024"), (11, "February 25, 2024")):
        a = idx.query(topic, text=f"What did Kate cook on {day}?", budget_tokens=10)
        assert [e.id for e in a.events] == [f"e{i:06d}"]
