"""`walk_parts` (a shard's part of entity walks) and `walkable_entities` (the entities it walks
from a set of rows) against plain-Python references, on hypothesis-generated postings: hubs
(the hub window), ties in time, the walk's own row, as_of, time windows, entities the shard
does not hold, empty inputs."""
from __future__ import annotations

import bisect

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fastctx.kernels.walks import walk_parts, walkable_entities

I64_MAX = np.iinfo(np.int64).max


def walk_parts_reference(wu, wt, wle, ent_ptr, post_t, post_g, ent_df, direction, mpe, t_lo, t_hi, as_of,
                         hub_window_s, hub_postings, post_ok):
    ptr, rows, times, elig, side = [0], [], [], [], []
    for u, t_u, le in zip(wu, wt, wle):
        if le >= 0 and mpe > 0:
            a, b = ent_ptr[le], ent_ptr[le + 1]
            pt, pg = list(post_t[a:b]), list(post_g[a:b])
            vis = [True] * (b - a) if not len(post_ok) else [bool(x) for x in post_ok[a:b]]
            lim = hub_window_s if ent_df[le] > hub_postings else I64_MAX
            if direction == 1:
                lo, hi = bisect.bisect_right(pt, t_u) - 1, len(pt)
            elif direction == 2:
                lo, hi = -1, bisect.bisect_left(pt, t_u)
            else:
                x, y = bisect.bisect_left(pt, t_u), bisect.bisect_right(pt, t_u)
                pos = x + bisect.bisect_left(pg[x:y], u)
                lo, hi = pos - 1, pos
            for s, start, step in ((0, lo, -1), (1, hi, 1)):
                taken, i = 0, start
                while 0 <= i < len(pt) and taken < mpe:
                    tx = pt[i]
                    if tx < t_lo or tx > t_hi or abs(tx - t_u) > lim:
                        break
                    ok = pg[i] != u and tx <= as_of and vis[i]
                    taken += ok
                    rows.append(pg[i])
                    times.append(tx)
                    elig.append(ok)
                    side.append(s)
                    i += step
        ptr.append(len(rows))
    return ptr, rows, times, elig, side


@st.composite
def cases(draw):
    n_ent = draw(st.integers(0, 5))
    ptr, pt, pg = [0], [], []
    for _ in range(n_ent):
        k = draw(st.integers(0, 12))
        ts = sorted(draw(st.lists(st.integers(0, 30), min_size=k, max_size=k)))
        gs = draw(st.lists(st.integers(0, 40), min_size=k, max_size=k, unique=True))
        pairs = sorted(zip(ts, gs))                       # (time, global row) order
        pt += [t for t, _ in pairs]
        pg += [g for _, g in pairs]
        ptr.append(len(pt))
    df = [ptr[i + 1] - ptr[i] + draw(st.integers(0, 3)) for i in range(n_ent)]
    n_walks = draw(st.integers(0, 8))
    wle = [draw(st.integers(-1, n_ent - 1)) if n_ent else -1 for _ in range(n_walks)]
    wu = [draw(st.sampled_from(pg)) if pg and draw(st.booleans()) else draw(st.integers(0, 40)) for _ in range(n_walks)]
    wt = [draw(st.integers(0, 30)) for _ in range(n_walks)]
    t_lo = draw(st.integers(-1, 15))
    t_hi = draw(st.integers(10, 31))
    as_of = draw(st.sampled_from([I64_MAX, 5, 12, 20, 30]))
    params = dict(direction=draw(st.sampled_from([1, 2, 3])), mpe=draw(st.integers(0, 5)), t_lo=t_lo, t_hi=t_hi,
                  as_of=as_of, hub_window_s=draw(st.integers(0, 10)), hub_postings=draw(st.integers(0, 8)))
    post_ok = draw(st.sampled_from([[], None]))
    if post_ok is None:
        post_ok = [int(draw(st.booleans())) for _ in pt]
    return wu, wt, wle, ptr, pt, pg, df, params, post_ok


@settings(max_examples=300, deadline=None)
@given(cases())
def test_walk_parts_matches_reference(case):
    wu, wt, wle, ptr, pt, pg, df, p, ok = case
    i64 = lambda x: np.asarray(x, np.int64)  # noqa: E731
    got = walk_parts(i64(wu), i64(wt), i64(wle), i64(ptr), i64(pt), i64(pg), i64(df), p["direction"], p["mpe"],
                     p["t_lo"], p["t_hi"], p["as_of"], p["hub_window_s"], p["hub_postings"], np.asarray(ok, np.uint8))
    want = walk_parts_reference(wu, wt, wle, ptr, pt, pg, df, p["direction"], p["mpe"], p["t_lo"], p["t_hi"],
                                p["as_of"], p["hub_window_s"], p["hub_postings"], ok)
    for g, w in zip(got, want):
        assert g.tolist() == list(w)


def test_many_entries_grow_the_buffers():
    n = 500
    pt = np.arange(n, dtype=np.int64)
    pg = np.arange(n, dtype=np.int64)
    ptr = np.array([0, n], np.int64)
    one = np.zeros(1, np.int64)
    out = walk_parts(np.array([250], np.int64), np.array([250], np.int64), one, ptr, pt, pg,
                     np.array([n], np.int64), 3, 1000, 0, n, I64_MAX, I64_MAX, 10 ** 9, np.zeros(0, np.uint8))
    assert out[0].tolist() == [0, n]
    assert sorted(out[1].tolist()) == list(range(n))
    assert out[2][~out[3]].tolist() == [250]               # the walk's own row: listed, not eligible


def walkable_entities_reference(loc, ev_ptr, ev_ent, ent_w, hold_ptr, hold, gent):
    le, of, ptr, gid, w, h_ptr, h = [], [], [0], [], [], [0], []
    for i, r in enumerate(loc):
        for e in ev_ent[ev_ptr[r]:ev_ptr[r + 1]]:
            if ent_w[e] > 0:
                le.append(e), of.append(i), gid.append(gent[e]), w.append(ent_w[e])
                h.extend(hold[hold_ptr[e]:hold_ptr[e + 1]])
                h_ptr.append(len(h))
        ptr.append(len(le))
    return le, of, ptr, gid, w, h_ptr, h


@st.composite
def entity_lists(draw):
    n_ent = draw(st.integers(1, 8))
    n_rows = draw(st.integers(0, 8))
    per_row = [draw(st.lists(st.integers(0, n_ent - 1), max_size=5)) for _ in range(n_rows)]
    holders = [draw(st.lists(st.integers(0, 3), max_size=3)) for _ in range(n_ent)]
    ent_w = [draw(st.sampled_from([0.0, 0.25, 0.8])) for _ in range(n_ent)]
    loc = draw(st.lists(st.integers(0, n_rows - 1), max_size=6)) if n_rows else []
    return loc, per_row, holders, ent_w


@settings(max_examples=200, deadline=None)
@given(entity_lists())
def test_walkable_entities_matches_reference(case):
    loc, per_row, holders, ent_w = case
    ev_ptr = np.cumsum([0] + [len(x) for x in per_row]).astype(np.int64)
    ev_ent = np.array([e for x in per_row for e in x], np.int32)
    hold_ptr = np.cumsum([0] + [len(x) for x in holders]).astype(np.int64)
    hold = np.array([s for x in holders for s in x], np.int32)
    gent = np.arange(len(ent_w), dtype=np.int64) * 7 + 3
    w32 = np.array(ent_w, np.float32)
    got = walkable_entities(np.array(loc, np.int64), ev_ptr, ev_ent, w32, hold_ptr, hold, gent)
    want = walkable_entities_reference(loc, ev_ptr, ev_ent, w32, hold_ptr, hold, gent)
    for g, w in zip(got, want):
        assert g.tolist() == [x.item() if hasattr(x, "item") else x for x in w]
    assert got[4].dtype == np.float32 and got[6].dtype == np.int32
