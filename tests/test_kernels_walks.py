"""`walk_parts` (a shard's part of entity walks) against a plain-Python reference, on
hypothesis-generated postings: hubs (the hub window), ties in time, the walk's own row, as_of,
time windows, entities the shard does not hold, empty inputs."""
from __future__ import annotations

import bisect

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fastctx.kernels.walks import walk_parts

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
