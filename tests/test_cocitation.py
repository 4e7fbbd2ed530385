"""Derived `co_cited` links: an event to the earlier events that link to one of its own link
targets (two follow-ups to one commit). The rule against a brute-force reading of its docstring,
at build, at add and on Ray (tests/test_ray_links.py compares every derived link), and its place
in the answer: walking back from one follow-up reaches the other, which lies forward of the
common cause."""
from __future__ import annotations

import random

import pytest

from conftest import built_and_added, derived_links
from fastctx.derive import cocitation_links
from fastctx.encoder import HashingEncoder
from fastctx.index import Index, build
from fastctx.params import AnswerParams, BuildParams
from fastctx.sources import read_source, to_batch

T0, DAY = 1_704_067_200, 86_400
TYPES = BuildParams().cocite_types


def _history(n=90, seed=4, stamp_s=1):
    """Events linking to random earlier ones by every link type (a few targets are cited often,
    some links dangle); times in whole `stamp_s`, so a coarse stamp gives runs of one time."""
    rng = random.Random(seed)
    kinds = ["references", "fixes", "follow_up", "reverts", "backport_of", "reply", "supersedes"]
    out = []
    for i in range(n):
        links = []
        for _ in range(rng.randint(0, 2)):
            if i and rng.random() < 0.9:
                to = f"c{rng.choice([0, 1, 2]) if rng.random() < 0.3 else rng.randrange(i):03d}"
            else:
                to = "gone"
            links.append({"to": to, "type": rng.choice(kinds)})
        t = T0 + i * 5 * 3_600 + rng.randint(0, 3_000)
        out.append({"id": f"c{i:03d}", "time": t - t % stamp_s, "source": "git", "kind": "commit",
                    "text": f"change number {i}", "entities": [f"person:dev{i % 4}"], "links": links})
    return out


def _reference(events, k, types):
    """Brute force: per target, its citers by the given types; each links to the k citers before
    it in (time, input row) order."""
    pos = {e["id"]: j for j, e in enumerate(events)}
    citers = {}
    for j, e in enumerate(events):
        for link in e.get("links", []):
            if link["type"] in types and link["to"] in pos and pos[link["to"]] != j:
                citers.setdefault(link["to"], set()).add(j)
    out = set()
    for rows in citers.values():
        rows = sorted(rows, key=lambda j: (events[j]["time"], j))
        for a, j in enumerate(rows):
            out |= {(events[j]["id"], events[d]["id"]) for d in rows[max(0, a - k):a]}
    return out


@pytest.mark.parametrize("k, types, stamp_s", [(3, TYPES, 1), (1, TYPES, 1), (5, ("follow_up",), 1),
                                               (3, TYPES, DAY), (2, ("references", "reply"), DAY)])
def test_links_match_a_brute_force_reading_of_the_rule(k, types, stamp_s):
    events = _history(stamp_s=stamp_s)
    batch = to_batch(read_source(events), HashingEncoder())
    src, dst = cocitation_links(batch, k, types)
    got = {(batch.ids[s], batch.ids[d]) for s, d in zip(src.tolist(), dst.tolist())}
    assert got == _reference(events, k, types)
    assert got and all((batch.times[d], d) < (batch.times[s], s) for s, d in zip(src.tolist(), dst.tolist()))
    assert len(cocitation_links(batch, 0, types)[0]) == 0 == len(cocitation_links(batch, k, ())[0])


def _links(idx, ids, kind="co_cited"):
    return derived_links(idx, ids, kind)


@pytest.mark.parametrize("stamp_s", [1, DAY])
def test_an_add_derives_the_links_a_build_would(tmp_path, stamp_s):
    """Half built, the rest added in one batch: an added event's siblings are the target's citers
    in the index and in the batch, so it links where the one-shot build links it."""
    one, inc, added = built_and_added(tmp_path, _history(stamp_s=stamp_s), 45)
    got = _links(inc, added)
    assert got == _links(one, added)
    assert sum(map(len, got.values())) >= 10
    inc.flush()
    assert _links(inc, added) == _links(one, added)


def test_walking_back_from_a_follow_up_reaches_the_other_follow_up(tmp_path):
    """Two follow-ups to one commit, nothing else in common (other people, other words, a month
    apart, among unrelated commits): the answer for the later one carries the earlier one with
    co-citation links, and only its cause without them."""
    rng = random.Random(2)
    words = ["cache", "parser", "lint", "docs", "build", "flag", "retry", "socket", "timer", "queue"]
    events = [{"id": f"x{i:03d}", "time": T0 + i * DAY, "source": "git", "kind": "commit",
               "text": f"{rng.choice(words)} {rng.choice(words)} tweak {i}", "entities": [f"person:dev{i % 5}"]}
              for i in range(100)]
    events += [
        {"id": "cause", "time": T0 + 10 * DAY + 1, "source": "git", "kind": "commit",
         "text": "switch the transport to nonblocking sockets", "entities": ["person:ann"]},
        {"id": "first", "time": T0 + 20 * DAY + 1, "source": "git", "kind": "commit",
         "text": "drop the legacy poll shim", "entities": ["person:bob"],
         "links": [{"to": "cause", "type": "follow_up"}]},
        {"id": "second", "time": T0 + 50 * DAY + 1, "source": "git", "kind": "commit",
         "text": "handle EAGAIN on keyboard interactive auth", "entities": ["person:cy"],
         "links": [{"to": "cause", "type": "follow_up"}]},
    ]
    q = "handle EAGAIN on keyboard interactive auth"
    on, _ = build(events, tmp_path / "on")
    off, _ = build(events, tmp_path / "off", params=BuildParams(cocite_k=0))
    assert _links(on, ["second"])["second"] == ["first"]
    # a walk back with less than one unit of evidence is also widened both ways (heads.widen_thin),
    # which reaches the sibling through the common cause too: read the links' effect without it
    narrow = AnswerParams(widen_below=0)
    got_on = [e.id for e in Index(tmp_path / "on", answer_params=narrow).query(q, budget_tokens=40).events]
    got_off = [e.id for e in Index(tmp_path / "off", answer_params=narrow).query(q, budget_tokens=40).events]
    assert {"second", "cause", "first"} <= set(got_on)
    assert {"second", "cause"} <= set(got_off) and "first" not in got_off
    assert "first" in [e.id for e in off.query(q, budget_tokens=40).events]
