"""Derived `relands` links: a change reverted and then re-landed under its own title is current
again, embedded and sharded, and the rule is exactly the one documented in derive.reland_links."""
from __future__ import annotations

import numpy as np
import pytest

from fastctx.corpus import LINK_CODE
from fastctx.derive import reland_links, title_key
from fastctx.index import Index, build
from fastctx.params import BuildParams

T0, HOUR, DAY = 1_704_067_200, 3_600, 86_400


def _commit(i, text, t, links=()):
    return {"id": f"c{i:03d}", "time": T0 + t, "source": "git", "kind": "commit", "text": text,
            "entities": ["file:src/pay.c"] if "charge" in text else ["file:src/log.c"],
            "links": [{"to": to, "type": ty} for to, ty in links]}


def _history():
    """A change landed, reverted, re-landed as a new pull request, reverted again by a revert of
    the re-land, and landed a third time; plus filler commits and an unrelated commit whose
    title shares two words with it."""
    title = "pay: retry the charge once on timeout"
    ev = [_commit(i, f"log: tidy message number {i}", i * DAY) for i in range(40)]
    ev += [
        _commit(100, f"{title} (#120)\n\nBody of the first landing.", 50 * DAY),
        _commit(101, f'Revert "{title} (#120)"\n\nBroke the nightly build.', 52 * DAY, [("c100", "reverts")]),
        _commit(102, f"{title} (#131)\n\nSecond try, with the build fixed.", 60 * DAY),
        _commit(103, f'Revert "{title} (#131)"', 61 * DAY, [("c102", "reverts")]),
        _commit(104, f"Reland: {title}\n\nThird try.", 70 * DAY),
        _commit(105, "pay: retry the webhook on 503", 71 * DAY),
        _commit(106, f"{title} (#150)\n\nA later commit with the same title.", 80 * DAY),
    ]
    return ev


def test_title_key_drops_reland_prefixes_and_pull_request_numbers():
    assert title_key("sunos: Oracle Developer Studio support (#3364)\n\nbody") == "sunos oracle developer studio support"
    assert title_key('Reland "unix: use select() for fds"') == "unix use select for fds"
    assert title_key("Reapply: foo bar baz (#12) (#13)") == "foo bar baz"
    assert title_key("Fix typo") is None and title_key(None) is None and title_key("") is None


def test_each_revert_is_undone_by_the_first_later_event_with_the_reverted_title(tmp_path):
    idx, _ = build(_history(), tmp_path / "i", params=BuildParams(actor_k=0))
    got = {e.id: [tuple(x) for x in e.links] for e in idx.get(["c102", "c104", "c106"])}
    # c102 re-lands c100 (reverted by c101); c104 re-lands c102 (reverted by c103); c106 re-lands nothing
    assert ("c101", "relands") in got["c102"]
    assert ("c103", "relands") in got["c104"]
    assert not [x for x in got["c106"] if x[1] == "relands"]


@pytest.mark.parametrize("shards", [1, 3])
def test_current_follows_revert_and_reland_to_the_last_landing(tmp_path, shards):
    idx, _ = build(_history(), tmp_path / "i", shards=shards, params=BuildParams(actor_k=0))
    if shards > 1:
        from fastctx.shards import open_local
        idx = open_local(tmp_path / "i")
    ans = idx.query("retry the charge once on timeout", type="current")
    assert ans.current is not None and ans.current.id == "c104"
    # as of the day after the first revert, the revert is what stands
    early = idx.query("retry the charge once on timeout", type="current", as_of=T0 + 53 * DAY)
    assert early.current.id == "c101"


def test_without_relands_the_revert_stays_current(tmp_path):
    idx, _ = build(_history(), tmp_path / "i", params=BuildParams(actor_k=0, relands=False))
    ans = idx.query("retry the charge once on timeout", type="current")
    assert ans.current.id in ("c101", "c103")


def test_reland_links_on_a_batch_match_a_direct_computation():
    from fastctx.encoder import HashingEncoder
    from fastctx.sources import read_source, to_batch
    batch = to_batch(read_source(_history()), HashingEncoder())
    src, dst = reland_links(batch)
    ids = batch.ids
    got = sorted((ids[s], ids[d]) for s, d in zip(src.tolist(), dst.tolist()))
    # by hand: for each (revert, reverted), the first later event with the reverted one's title
    events = _history()
    expect = []
    for r in events:
        for lk in r["links"]:
            if lk["type"] != "reverts":
                continue
            x = next(e for e in events if e["id"] == lk["to"])
            later = sorted((e["time"], e["id"]) for e in events if e["time"] > r["time"]
                           and title_key(e["text"]) == title_key(x["text"]) and e["id"] != x["id"])
            if later:
                expect.append((later[0][1], r["id"]))
    assert got == sorted(expect) == [("c102", "c101"), ("c104", "c103")]
    assert LINK_CODE["relands"] > LINK_CODE["same_actor"]   # appended: older indexes keep their codes
    assert np.all(np.diff(np.asarray(batch.link_src)) >= 0)


# ------------------------------------------------------------------------- incrementally at add
def _links(idx, ids, kind):
    return {e.id: sorted(to for to, ty in e.links if ty == kind) for e in idx.get(ids)}


def test_an_add_derives_relands_and_same_actor_links_as_a_build_would(tmp_path):
    events = []
    for i, e in enumerate(_history()):  # each commit by one of three people, two notes within the hour
        who = [f"person:dev{i % 3}"]
        events.append(dict(e, entities=e["entities"] + who))
        for m in (1, 2):
            events.append(_commit(1000 + 10 * i + m, f"docs: note {m} about commit {i}", e["time"] - T0 + m * 900))
            events[-1]["entities"] += who
    cut = next(i for i, e in enumerate(events) if e["id"] == "c102")
    one, _ = build(events, tmp_path / "one")
    inc, _ = build(events[:cut], tmp_path / "inc")
    inc.add(events[cut:cut + 2])        # the re-land and its revert, then the rest one by one
    for e in events[cut + 2:]:
        inc.add([e])
    added = [e["id"] for e in events[cut:]]
    for kind in ("relands", "same_actor"):
        assert _links(inc, added, kind) == _links(one, added, kind)
    assert sum(len(v) for v in _links(inc, added, "same_actor").values()) >= 2 * len(added) // 3
    assert _links(inc, ["c102", "c104"], "relands") == {"c102": ["c101"], "c104": ["c103"]}
    q = "retry the charge once on timeout"
    assert inc.query(q, type="current").current.id == "c104"
    # the derived links live in the write-ahead log beside the events: a reopened index replays
    # them, and a flush writes them into the segment
    inc.close()
    again = Index(tmp_path / "inc")
    assert again.query(q, type="current").current.id == "c104"
    again.flush()
    assert Index(tmp_path / "inc").query(q, type="current").current.id == "c104"
    assert _links(Index(tmp_path / "inc"), added, "same_actor") == _links(one, added, "same_actor")


def test_a_damaged_derived_links_record_is_refused_by_name(tmp_path):
    from fastctx.errors import CorruptIndexError
    from fastctx.shard import _derived_links
    assert _derived_links([[0], ["c1"], [LINK_CODE["relands"]]], 1) == ([0], ["c1"], [LINK_CODE["relands"]])
    for bad in ([[1], ["c1"], [LINK_CODE["relands"]]], [[0], [""], [LINK_CODE["relands"]]],
                [[0], ["c1"], [LINK_CODE["reverts"]]], [[0, 0], ["c1"], [LINK_CODE["relands"]]]):
        with pytest.raises(ValueError):
            _derived_links(bad, 1)
    assert issubclass(CorruptIndexError, Exception)


# ------------------------------------------------------------- a revert of several events at once
def _cleanup_history():
    """Three changes backed out by one clean-up commit; only the second is re-landed."""
    ev = [_commit(i, f"log: tidy message number {i}", i * DAY) for i in range(30)]
    titles = ["pay: refund the charge in full on error", "docs: link to the right chat network",
              "sched: unroll a group of one task"]
    ev += [_commit(200 + i, f"{t}\n\nThe change.", (40 + i) * DAY) for i, t in enumerate(titles)]
    ev.append(_commit(210, "Clean-up: back out unreviewed changes", 50 * DAY,
                      [(f"c{200 + i}", "reverts") for i in range(3)]))
    ev.append(_commit(211, f"{titles[1]}\n\nLanded again after review.", 55 * DAY))
    return ev


@pytest.mark.parametrize("shards", [1, 3])
def test_a_revert_of_several_events_is_undone_one_event_at_a_time(tmp_path, shards):
    idx, _ = build(_cleanup_history(), tmp_path / "i", shards=shards, params=BuildParams(actor_k=0))
    assert _links(idx, ["c211"], "relands") == {"c211": ["c201"]}   # to the event it re-lands
    if shards > 1:
        from fastctx.shards import open_local
        idx = open_local(tmp_path / "i")
    current = lambda q, **kw: idx.query(q, type="current", **kw).current.id  # noqa: E731
    assert current("link to the right chat network") == "c211"
    assert current("refund the charge in full on error") == "c210"   # backed out, never re-landed
    assert current("unroll a group of one task") == "c210"
    # the documented limit: between the clean-up and the re-land, the re-landed change itself
    assert current("link to the right chat network", as_of=T0 + 52 * DAY) == "c201"
    assert current("refund the charge in full on error", as_of=T0 + 52 * DAY) == "c210"


def test_an_add_links_a_re_land_after_a_multi_event_revert_as_a_build_does(tmp_path):
    events = _cleanup_history()
    one, _ = build(events, tmp_path / "one", params=BuildParams(actor_k=0))
    inc, _ = build(events[:-2], tmp_path / "inc", params=BuildParams(actor_k=0))
    inc.add([events[-2]])
    inc.add([events[-1]])
    assert _links(inc, ["c211"], "relands") == _links(one, ["c211"], "relands") == {"c211": ["c201"]}
    assert inc.query("link to the right chat network", type="current").current.id == "c211"
    assert inc.query("refund the charge in full on error", type="current").current.id == "c210"


def test_reland_links_of_a_multi_event_revert_point_at_the_reverted_event():
    from fastctx.encoder import HashingEncoder
    from fastctx.sources import read_source, to_batch
    batch = to_batch(read_source(_history() + _cleanup_history()[30:]), HashingEncoder())
    src, dst = reland_links(batch)
    got = sorted((batch.ids[s], batch.ids[d]) for s, d in zip(src.tolist(), dst.tolist()))
    assert got == [("c102", "c101"), ("c104", "c103"), ("c211", "c201")]


# ------------------------------------------------------------ a revert named by its title only
def _title_only_history():
    """A change landed twice under one title; the second landing is reverted by a commit that
    names it only by title (a web-interface revert: "Reverts #77"), then re-landed."""
    ev = [_commit(i, f"log: tidy message number {i}", i * DAY) for i in range(30)]
    title = "sched: unroll a group of one task"
    ev += [_commit(300, f"{title} (#70)\n\nFirst landing.", 32 * DAY),
           _commit(301, f"{title} (#77)\n\nSecond landing.", 40 * DAY),
           _commit(302, f'Revert "{title}" (#80)\n\nReverts #77', 42 * DAY),
           _commit(303, 'Revert "log: tidy"\n\nToo generic to name one change.', 43 * DAY),
           _commit(304, f"Reland: {title}\n\nThird landing.", 50 * DAY)]
    return ev


def test_a_revert_named_by_title_reverts_the_latest_event_with_that_title(tmp_path):
    events = _title_only_history()
    idx, _ = build(events[:-1], tmp_path / "i", params=BuildParams(actor_k=0))
    assert _links(idx, ["c302", "c303"], "title_reverts") == {"c302": ["c301"], "c303": []}
    assert idx.query("unroll a group of one task", type="current").current.id == "c302"
    full, _ = build(events, tmp_path / "full", params=BuildParams(actor_k=0))
    assert _links(full, ["c304"], "relands") == {"c304": ["c302"]}
    assert full.query("unroll a group of one task", type="current").current.id == "c304"
    off, _ = build(events, tmp_path / "off", params=BuildParams(actor_k=0, title_reverts=False))
    assert off.query("unroll a group of one task", type="current").current.id in ("c301", "c304")


def test_an_add_finds_the_title_a_revert_names_in_the_index(tmp_path):
    events = _title_only_history()
    one, _ = build(events, tmp_path / "one", params=BuildParams(actor_k=0))
    inc, _ = build(events[:-3], tmp_path / "inc", params=BuildParams(actor_k=0))
    for e in events[-3:]:
        inc.add([e])          # the revert finds its target among indexed events, by the words
    ids = [e["id"] for e in events[-3:]]
    for kind in ("title_reverts", "relands"):
        assert _links(inc, ids, kind) == _links(one, ids, kind)
    assert inc.query("unroll a group of one task", type="current").current.id == "c304"


def test_title_revert_links_match_a_direct_computation():
    from fastctx.derive import reverted_title, title_revert_links
    from fastctx.encoder import HashingEncoder
    from fastctx.sources import read_source, to_batch
    events = _title_only_history() + _history()[40:]
    batch = to_batch(read_source(events), HashingEncoder())
    src, dst = title_revert_links(batch)
    got = sorted((batch.ids[s], batch.ids[d]) for s, d in zip(src.tolist(), dst.tolist()))
    expect = []
    for r in events:   # by hand: unlinked `Revert "T"` -> the latest earlier event titled T
        key = reverted_title(r["text"])
        if key and not r["links"]:
            before = [e for e in events if e["time"] < r["time"] and title_key(e["text"]) == key]
            if before:
                expect.append((r["id"], max(before, key=lambda e: e["time"])["id"]))
    assert got == sorted(expect) == [("c302", "c301")]
    assert reverted_title('Revert "Revert "a b c""\n') == title_key('Revert "a b c"')
    assert reverted_title("Reverts the earlier change to the retry loop") is None


def test_an_event_two_people_share_with_an_earlier_one_is_linked_once_at_add_as_at_build(tmp_path):
    """Author and committer both on consecutive commits: one `same_actor` link per pair, and an
    added event's derived links in the order a build lists them (`co_cited` too)."""
    events = []
    for i in range(12):
        e = _commit(400 + i, f"pay: step {i} of the retry work", 40 * DAY + i * 600,
                    [("c000", "references")] if i % 3 == 0 else ())
        e["entities"] = e["entities"] + ["person:ana", "person:bob"] + (["person:cy"] if i % 2 else [])
        events.append(e)
    events = [_commit(0, "log: the first commit", 0)] + events
    # one sitting and nothing else: too little to tell from chance (derive.actor_excess), so the
    # builds are asked for same-actor links whatever it measures
    always = BuildParams(actor_min_excess=0)
    one, _ = build(events, tmp_path / "one", params=always)
    inc, _ = build(events[:5], tmp_path / "inc", params=always)
    inc.add(events[5:9])
    for e in events[9:]:
        inc.add([e])
    ids = [e["id"] for e in events[5:]]
    def in_order(idx):
        return {e.id: [tuple(x) for x in e.links if x[1] != "co_mention"] for e in idx.get(ids)}
    assert in_order(inc) == in_order(one)
    assert all(len(set(v)) == len(v) for v in in_order(one).values())
    assert _links(one, ["c405"], "same_actor") == {"c405": ["c401", "c403", "c404"]}   # cy: c401, c403
