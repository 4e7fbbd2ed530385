"""Derived `co_mention` links: an event to the earlier events that touched the same
mid-frequency files in the same weeks. The rule against a brute-force reading of its docstring,
at build and at add, and its place in the answer (walked, never causal evidence)."""
from __future__ import annotations

import math
import random

import pytest

from conftest import built_and_added, derived_links
from fastctx.derive import comention_links
from fastctx.encoder import HashingEncoder
from fastctx.index import Index, build
from fastctx.params import AnswerParams, BuildParams
from fastctx.sources import read_source, to_batch

T0, DAY = 1_704_067_200, 86_400
P = BuildParams()


def _history(n=80, seed=3, stamp_s=1):
    """Commits touching random subsets of 30 files (three of them on a third of the commits), by
    5 people, with services and people that must not count; times in whole `stamp_s` (distinct at
    1 s; a coarse stamp gives runs of commits with one time, as a rebased series has)."""
    rng = random.Random(seed)
    files = [f"file:src/m{i}.py" for i in range(30)]
    out = []
    for i in range(n):
        touched = rng.sample(files[:3], rng.randint(0, 2)) + rng.sample(files[3:], rng.randint(1, 3))
        t = T0 + i * 7 * 3_600 + rng.randint(0, 3_000)
        out.append({"id": f"c{i:03d}", "time": t - t % stamp_s, "source": "git",
                    "kind": "commit", "text": f"change number {i}",
                    "entities": touched + [f"person:dev{i % 5}", "service:pay"]})
    return out


def _reference(events, k, window_s, scale_s, max_share, per_entity=256):
    """Brute force: weights from file frequencies, candidates per file the nearest earlier holders
    ("earlier" in (time, input row) order)."""
    n = len(events)
    holders = {}
    for j, e in enumerate(events):
        for f in set(e["entities"]):
            if f.startswith(("file:", "path:")):
                holders.setdefault(f, []).append(j)
    weight = {f: (math.log(n / len(h)) if 2 <= len(h) <= max(2.0, max_share * n) else 0.0) for f, h in holders.items()}
    out = set()
    for i, e in enumerate(events):
        score = {}
        for f in set(e["entities"]):
            if weight.get(f, 0.0) <= 0:
                continue
            earlier = sorted((events[j]["time"], j) for j in holders[f]
                             if (events[j]["time"], j) < (e["time"], i) and e["time"] - events[j]["time"] <= window_s)
            for _, j in earlier[-per_entity:]:
                score[j] = score.get(j, 0.0) + weight[f]
        ranked = sorted(score, key=lambda j: (-score[j] / (1 + (e["time"] - events[j]["time"]) / scale_s), j))
        out |= {(e["id"], events[j]["id"]) for j in ranked[:k]}
    return out


@pytest.mark.parametrize("k, window_days, max_share, stamp_s",
                         [(5, 365, 0.2, 1), (2, 3, 0.2, 1), (3, 365, 0.5, 1), (5, 365, 0.2, DAY), (2, 3, 0.2, DAY)])
def test_links_match_a_brute_force_reading_of_the_rule(k, window_days, max_share, stamp_s):
    events = _history(stamp_s=stamp_s)
    batch = to_batch(read_source(events), HashingEncoder())
    src, dst = comention_links(batch, k, window_days * DAY, 30 * DAY, max_share, ("file:", "path:"))
    got = {(batch.ids[s], batch.ids[d]) for s, d in zip(src.tolist(), dst.tolist())}
    assert got == _reference(events, k, window_days * DAY, 30 * DAY, max_share)
    assert got and all((batch.times[d], d) < (batch.times[s], s) for s, d in zip(src.tolist(), dst.tolist()))
    if stamp_s > 1:   # commits stamped with one time link in input order, not at all
        assert any(batch.times[d] == batch.times[s] for s, d in zip(src.tolist(), dst.tolist()))
    # people and services never count: without file prefixes there is nothing to link
    none = comention_links(batch, k, window_days * DAY, 30 * DAY, max_share, ("docs:",))
    assert len(none[0]) == 0


def test_files_on_too_many_events_say_nothing():
    events = _history()
    for e in events:
        e["entities"] = ["file:CHANGELOG"] + [x for x in e["entities"] if not x.startswith("file:")]
    batch = to_batch(read_source(events), HashingEncoder())
    assert len(comention_links(batch, 5, 365 * DAY, 30 * DAY, 0.2, ("file:",))[0]) == 0


def _links(idx, ids, kind="co_mention"):
    return derived_links(idx, ids, kind)


@pytest.mark.parametrize("stamp_s", [1, DAY])
def test_an_add_derives_the_links_a_build_would(tmp_path, stamp_s):
    """Half built, the rest added in one batch: frequencies count both, so every added event links
    where the one-shot build links it (also with runs of one time across the two halves)."""
    one, inc, added = built_and_added(tmp_path, _history(stamp_s=stamp_s), 40)
    got = _links(inc, added)
    assert got == _links(one, added)
    assert _links(inc, added, "same_actor") == _links(one, added, "same_actor")
    assert sum(map(len, got.values())) >= len(added)
    inc.flush()
    assert _links(inc, added) == _links(one, added)


def test_a_co_mention_reaches_the_unlinked_predecessor_and_is_no_causal_evidence(tmp_path):
    """A fix and the change it repairs share two files in one week, nothing else (other people, no
    ticket, other words); the files are hubs to the entity walk (on 17 commits: more than 16). With
    co-mention links the answer to the fix carries its predecessor; without them it does not."""
    rng = random.Random(5)
    words = ["guard", "truncated", "frames", "chunk", "reassembly", "against", "parser", "cache", "io", "lint"]
    events = []
    for i in range(120):
        touched = ["file:src/core.py", "file:src/util.py"] if i % 8 == 0 else [f"file:src/f{i % 7}.py"]
        events.append({"id": f"b{i:03d}", "time": T0 + i * 3 * DAY, "source": "git", "kind": "commit",
                       "text": f"{rng.choice(words)} {rng.choice(words)} tweak {i}",
                       "entities": touched + [f"person:dev{i % 5}"]})
    t = T0 + 200 * DAY
    events.append({"id": "orig", "time": t, "source": "git", "kind": "commit",
                   "text": "introduce streaming decoder for large payloads",
                   "entities": ["file:src/core.py", "file:src/util.py", "person:ann"]})
    events.append({"id": "fix", "time": t + 2 * DAY, "source": "git", "kind": "commit",
                   "text": "guard against truncated frames in chunk reassembly",
                   "entities": ["file:src/core.py", "file:src/util.py", "person:bob"]})
    q = "guard against truncated frames in chunk reassembly"
    on, _ = build(events, tmp_path / "on", params=BuildParams(comention_k=1))
    off, _ = build(events, tmp_path / "off", params=BuildParams(comention_k=0))
    assert "orig" in _links(on, ["fix"])["fix"]
    # ann wrote nothing else, so with the default people floor this weak step is cut as a
    # stranger's (pooling.same_people): what the co-mention reaches is read with the cut off
    loose = AnswerParams(people_floor=0.0)
    on, off = (Index(tmp_path / name, answer_params=loose) for name in ("on", "off"))
    got_on = [e.id for e in on.query(q, budget_tokens=30).events]
    got_off = [e.id for e in off.query(q, budget_tokens=30).events]
    assert "fix" in got_on and "orig" in got_on
    assert "fix" in got_off and "orig" not in got_off
    by_default = [e.id for e in Index(tmp_path / "on").query(q, budget_tokens=30).events]
    assert "fix" in by_default and "orig" not in by_default
    assert dict(AnswerParams().link_weights)["co_mention"] < dict(AnswerParams().link_weights)["reply"]


def test_a_series_stamped_with_one_time_links_in_input_order(tmp_path):
    """A rebased series of four commits by one author carries one commit time: each links to the
    ones before it in the input (same_actor: the previous two; co_mention: those sharing its file),
    the first to none of the later ones; an add of the series' second half links the same."""
    events = _history()
    t = events[-1]["time"] + DAY
    series = [{"id": f"s{j}", "time": t, "source": "git", "kind": "commit", "text": f"series step {j}",
               "entities": ["file:src/series.py", "person:ann"]} for j in range(4)]
    one, _ = build(events + series, tmp_path / "one")
    got = _links(one, ["s0", "s1", "s3"], "same_actor")
    assert got == {"s0": [], "s1": ["s0"], "s3": ["s1", "s2"]}
    assert _links(one, ["s0", "s3"]) == {"s0": [], "s3": ["s0", "s1", "s2"]}   # the series' own file
    inc, _ = build(events + series[:2], tmp_path / "inc")
    inc.add(series[2:])
    for kind in ("same_actor", "co_mention"):
        assert _links(inc, ["s2", "s3"], kind) == _links(one, ["s2", "s3"], kind)
