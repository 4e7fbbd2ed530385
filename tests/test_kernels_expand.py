"""Graph-expansion kernels against a plain-Python reference.

The reference below re-implements the contract in ``kernels/expand.py`` with
lists, dicts and heapq, so the kernels must match it exactly: same rows in
the same order, same parents/vias/hops/stats, and float32-equal scores
(PPR scores: within 1e-6 relative).  Hypothesis runs derandomized (fixed
seed, no example database) with 200 cases per property.
"""

import heapq
import math
from itertools import takewhile

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fastctx.kernels import warm_up
from fastctx.kernels.expand import expand_best_first, expand_ppr_push

SETTINGS = settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PARAM_NAMES = (
    "direction", "time_lo", "time_hi", "max_hops", "max_results",
    "max_edge_visits", "hub_postings", "hub_window_s", "max_per_entity",
    "min_score", "time_scale_s",
)
BIG = 10**9
WIDE = (-(2**62), 2**62)


# ---------------------------------------------------------------------------
# graph building
# ---------------------------------------------------------------------------


def csr(n, pairs):
    """CSR over 0..n-1 from (key, value, extra) triples, stable in input order."""
    pairs = sorted(pairs, key=lambda p: p[0])  # sorted() is stable
    ptr = np.zeros(n + 1, dtype=np.int64)
    for k, _, _ in pairs:
        ptr[k + 1] += 1
    return (
        np.cumsum(ptr).astype(np.int64),
        np.array([p[1] for p in pairs], dtype=np.int64),
        np.array([p[2] for p in pairs], dtype=np.int8),
    )


def make_graph(times, allowed, links, link_weight, ev_ents, ent_weight):
    """Kernel input arrays from python lists; links are (src, dst, type)."""
    n = len(times)
    times = np.array(times, dtype=np.int64)
    out_ptr, out_dst, out_type = csr(n, [(s, d, t) for s, d, t in links])
    in_ptr, in_src, in_type = csr(n, [(d, s, t) for s, d, t in links])
    n_ent = len(ent_weight)
    ev_ptr = np.zeros(n + 1, dtype=np.int64)
    ev_ptr[1:] = np.cumsum([len(es) for es in ev_ents])
    postings = [[] for _ in range(n_ent)]
    for row, es in enumerate(ev_ents):
        for e in es:
            postings[e].append(row)
    ent_ptr = np.zeros(n_ent + 1, dtype=np.int64)
    ent_ptr[1:] = np.cumsum([len(p) for p in postings])
    ent_rows = [r for p in postings for r in sorted(p, key=lambda r: (times[r], r))]
    return dict(
        times=times,
        allowed=np.array(allowed, dtype=np.uint8),
        out_ptr=out_ptr, out_dst=out_dst, out_type=out_type,
        in_ptr=in_ptr, in_src=in_src, in_type=in_type,
        link_weight=np.array(link_weight, dtype=np.float32),
        ev_ptr=ev_ptr,
        ev_ent=np.array([e for es in ev_ents for e in es], dtype=np.int64),
        ent_ptr=ent_ptr,
        ent_rows=np.array(ent_rows, dtype=np.int64),
        ent_weight=np.array(ent_weight, dtype=np.float32),
    )


GRAPH_KEYS = (
    "times", "allowed", "out_ptr", "out_dst", "out_type", "in_ptr", "in_src",
    "in_type", "link_weight", "ev_ptr", "ev_ent", "ent_ptr", "ent_rows",
    "ent_weight",
)


def params(**kw):
    p = dict(direction=3, time_lo=WIDE[0], time_hi=WIDE[1], max_hops=BIG,
             max_results=BIG, max_edge_visits=BIG, hub_postings=BIG,
             hub_window_s=BIG, max_per_entity=BIG, min_score=0.0,
             time_scale_s=0.0)
    p.update(kw)
    return p


def run_bf(g, seeds, scores, p):
    return expand_best_first(
        np.asarray(seeds, dtype=np.int64), np.asarray(scores, dtype=np.float32),
        *(g[k] for k in GRAPH_KEYS), *(p[k] for k in PARAM_NAMES))


def run_ppr(g, seeds, scores, p, alpha, eps):
    return expand_ppr_push(
        np.asarray(seeds, dtype=np.int64), np.asarray(scores, dtype=np.float32),
        *(g[k] for k in GRAPH_KEYS), *(p[k] for k in PARAM_NAMES), alpha, eps)


# ---------------------------------------------------------------------------
# pure-Python reference
# ---------------------------------------------------------------------------


def ref_entries(g, u, p):
    """Every edge entry the kernel would read from u, budget ignored.

    Each item is (v, weight, via_kind, via_id) for an eligible neighbour or
    None for an entry that is read (costs budget) but yields nothing.
    """
    times, allowed = g["times"], g["allowed"]
    d = p["direction"]
    t_u = int(times[u])
    lo, hi = p["time_lo"], p["time_hi"]
    entries = []

    def links(ptr, nbr, typ):
        for k in range(ptr[u], ptr[u + 1]):
            t, v = int(typ[k]), int(nbr[k])
            ok = 0 <= t < len(g["link_weight"])
            w = float(g["link_weight"][t]) if ok else 0.0
            tv = int(times[v])
            ok = ok and w > 0 and v != u and allowed[v] and lo <= tv <= hi
            ok = ok and not (d == 1 and tv > t_u) and not (d == 2 and tv < t_u)
            entries.append((v, w, 1, t) if ok else None)

    if d & 1:
        links(g["out_ptr"], g["out_dst"], g["out_type"])
    if d & 2:
        links(g["in_ptr"], g["in_src"], g["in_type"])
    if not (d & 3) or p["max_per_entity"] <= 0:
        return entries
    for k in range(g["ev_ptr"][u], g["ev_ptr"][u + 1]):
        e = int(g["ev_ent"][k])
        w_e = float(g["ent_weight"][e])
        if not w_e > 0:
            continue
        post = [int(r) for r in g["ent_rows"][g["ent_ptr"][e]:g["ent_ptr"][e + 1]]]
        key = [(int(times[r]), r) for r in post]
        idx = range(len(post))
        if d == 1:
            down, up = [i for i in reversed(idx) if key[i][0] <= t_u], []
        elif d == 2:
            down, up = [], [i for i in idx if key[i][0] >= t_u]
        else:
            down = [i for i in reversed(idx) if key[i] < (t_u, u)]
            up = [i for i in idx if key[i] >= (t_u, u)]
        hub = len(post) > p["hub_postings"]
        win = p["hub_window_s"]
        down = list(takewhile(
            lambda i: key[i][0] >= lo and not (hub and t_u - key[i][0] > win), down))
        up = list(takewhile(
            lambda i: key[i][0] <= hi and not (hub and key[i][0] - t_u > win), up))
        taken = 0
        while taken < p["max_per_entity"] and (down or up):
            if down and (not up or t_u - key[down[0]][0] <= key[up[0]][0] - t_u):
                i = down.pop(0)
            else:
                i = up.pop(0)
            v, dt = post[i], abs(key[i][0] - t_u)
            if v == u or not allowed[v]:
                entries.append(None)
                continue
            taken += 1
            ts = p["time_scale_s"]
            decay = 1.0 / (1.0 + float(dt) / ts) if ts > 0 else 1.0
            entries.append((v, w_e * decay, 2, e))
    return entries


def ref_seeds(g, seeds, scores, p):
    """Kept seeds as (row, float64 score) after the kernel's filters."""
    n = len(g["times"])
    kept = []
    for r, s in zip(seeds, scores):
        r, s = int(r), float(np.float32(s))
        if 0 <= r < n and g["allowed"][r] and p["time_lo"] <= g["times"][r] <= p["time_hi"]:
            kept.append((r, s))
    return kept


def ref_best_first(g, seeds, scores, p):
    ms = p["min_score"]
    best, node, done, heap, out = {}, {}, set(), [], []
    pushes = examined = 0
    hit = False
    for r, s in ref_seeds(g, seeds, scores, p) if p["max_results"] > 0 else []:
        if not s >= ms:
            continue
        node.setdefault(r, (-1, 0, -1, 0))
        if s > best.get(r, -math.inf):
            best[r] = s
            heapq.heappush(heap, (-s, r))
            pushes += 1
    while heap and len(out) < p["max_results"]:
        if -heap[0][0] < ms:
            break
        _, u = heapq.heappop(heap)
        if u in done:
            continue
        done.add(u)
        out.append(u)
        if len(out) >= p["max_results"] or hit or node[u][3] >= p["max_hops"]:
            continue
        entries = ref_entries(g, u, p)
        budget = max(p["max_edge_visits"] - examined, 0)
        hit = len(entries) > budget
        entries = entries[:budget]
        examined += len(entries)
        for ent in entries:
            if ent is None:
                continue
            v, w, kind, via = ent
            cand = best[u] * w
            if cand < ms or v in done or not cand > best.get(v, -math.inf):
                continue
            best[v] = cand
            node[v] = (u, kind, via, node[u][3] + 1)
            heapq.heappush(heap, (-cand, v))
            pushes += 1
    return (
        np.array(out, dtype=np.int64),
        np.array([best[r] for r in out], dtype=np.float32),
        np.array([node[r][0] for r in out], dtype=np.int64),
        np.array([node[r][1] for r in out], dtype=np.int8),
        np.array([node[r][2] for r in out], dtype=np.int64),
        np.array([node[r][3] for r in out], dtype=np.int32),
        np.array([len(out), examined, pushes, int(hit)], dtype=np.int64),
    )


def ref_ppr(g, seeds, scores, p, alpha, eps):
    slot = {}  # row -> slot, in discovery order
    rows, pm, res, best_c, info, queued = [], [], [], [], [], []

    def touch(v):
        if v not in slot:
            slot[v] = len(rows)
            rows.append(v)
            pm.append(0.0)
            res.append(0.0)
            best_c.append(0.0)
            info.append([-1, -1, -1, 0, -1])  # parent, kind, via, hops, pslot
            queued.append(False)
        return slot[v]

    queue, examined, pushes, hit = [], 0, 0, False
    for r, s in ref_seeds(g, seeds, scores, p) if p["max_results"] > 0 else []:
        if not s > 0:
            continue
        new = r not in slot
        i = touch(r)
        if new:
            info[i][1] = 0
            queued[i] = True
            queue.append(i)
        res[i] = max(res[i], s)
    total = 0.0
    for x in res:
        total += x
    res = [x / total for x in res]
    head = 0
    while head < len(queue):
        s = queue[head]
        head += 1
        queued[s] = False
        mass, res[s] = res[s], 0.0
        if hit or info[s][3] >= p["max_hops"]:
            pm[s] += alpha * mass
            continue
        entries = ref_entries(g, rows[s], p)
        budget = max(p["max_edge_visits"] - examined, 0)
        hit = len(entries) > budget
        examined += min(len(entries), budget)
        entries = [e for e in entries[:budget] if e is not None]
        pushes += 1
        w_sum = 0.0
        for e in entries:
            w_sum += e[1]
        pm[s] += alpha * mass
        if not entries or not w_sum > 0:
            continue
        spread = (1.0 - alpha) * mass
        for v, w, kind, via in entries:
            c = spread * w / w_sum
            i = touch(v)
            res[i] += c
            if info[i][1] != 0 and i > s and c > best_c[i]:
                best_c[i] = c
                info[i] = [rows[s], kind, via, info[s][3] + 1, s]
            if not queued[i] and res[i] > 0 and res[i] >= eps:
                queued[i] = True
                queue.append(i)
    for i in range(len(rows)):
        if info[i][4] >= 0:
            info[i][3] = info[info[i][4]][3] + 1
    keep = [i for i in range(len(rows)) if pm[i] > 0 and pm[i] >= p["min_score"]]
    keep.sort(key=lambda i: (-pm[i], rows[i]))
    keep = keep[:max(0, p["max_results"])]
    return (
        np.array([rows[i] for i in keep], dtype=np.int64),
        np.array([pm[i] for i in keep], dtype=np.float32),
        np.array([info[i][0] for i in keep], dtype=np.int64),
        np.array([info[i][1] for i in keep], dtype=np.int8),
        np.array([info[i][2] for i in keep], dtype=np.int64),
        np.array([info[i][3] for i in keep], dtype=np.int32),
        np.array([len(keep), examined, pushes, int(hit)], dtype=np.int64),
    )


# ---------------------------------------------------------------------------
# hypothesis strategies
# ---------------------------------------------------------------------------

weights = st.sampled_from([1.0, 0.5, 0.9, 0.25, 0.3, 0.0, -0.5]) | st.floats(
    0.0, 1.0, width=32)


def dense_graph(seed):
    """A busier random graph than hypothesis's small-biased draws give."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40))
    times = rng.integers(0, 15, n).tolist()
    allowed = (rng.random(n) < 0.85).astype(int).tolist()

    def weight():
        return float(rng.choice([1.0, 0.5, 0.9, rng.random(), 0.0]))

    n_types = int(rng.integers(1, 4))
    link_weight = [weight() for _ in range(n_types)]
    m = int(rng.integers(0, 3 * n))
    links = list(zip(rng.integers(0, n, m).tolist(), rng.integers(0, n, m).tolist(),
                     rng.integers(-1, n_types + 1, m).tolist()))
    if rng.random() < 0.5:
        links = [(s, d, t) if times[d] <= times[s] else (d, s, t) for s, d, t in links]
    n_ent = int(rng.integers(1, 7))
    ev_ents = [rng.integers(0, n_ent, rng.integers(0, 4)).tolist() for _ in range(n)]
    ev_ents = [es + [0] if rng.random() < 0.8 else es for es in ev_ents]  # hub
    ent_weight = [weight() for _ in range(n_ent)]
    return make_graph(times, allowed, links, link_weight, ev_ents, ent_weight)


@st.composite
def graphs(draw):
    if draw(st.booleans()):
        return dense_graph(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(1, 24))  # n = 0 has its own test
    times = draw(st.lists(st.integers(0, 12), min_size=n, max_size=n))
    allowed = draw(st.lists(st.sampled_from([1, 1, 1, 0]), min_size=n, max_size=n))
    n_types = draw(st.integers(1, 3))
    link_weight = draw(st.lists(weights, min_size=n_types, max_size=n_types))
    links = []
    if n:
        node = st.integers(0, n - 1)
        links = draw(st.lists(st.tuples(node, node, st.integers(-1, n_types)),
                              min_size=n // 2, max_size=3 * n))
        if draw(st.booleans()):  # well-formed: links point to earlier events
            links = [(s, d, t) if times[d] <= times[s] else (d, s, t)
                     for s, d, t in links]
    n_ent = draw(st.integers(0, 4))
    ev_ents = [[] for _ in range(n)]
    if n_ent:
        ev_ents = draw(st.lists(st.lists(st.integers(0, n_ent - 1), max_size=4),
                                min_size=n, max_size=n))
        if draw(st.booleans()):  # a hub: entity 0 mentioned by (almost) all
            ev_ents = [es + [0] if r % 5 else es for r, es in enumerate(ev_ents)]
    ent_weight = draw(st.lists(weights, min_size=n_ent, max_size=n_ent))
    return make_graph(times, allowed, links, link_weight, ev_ents, ent_weight)


def pick(*values):
    """sampled_from with the typical (permissive) value listed first."""
    return st.sampled_from(values)


@st.composite
def queries(draw, g):
    n = len(g["times"])
    # mostly valid rows; -1 and n exercise the bounds filter
    seeds = draw(st.lists(st.integers(-1, n), min_size=1, max_size=6))
    scores = draw(st.lists(pick(1.0, 0.5, 0.8) | st.floats(0, 1, width=32),
                           min_size=len(seeds), max_size=len(seeds)))
    time_lo, time_hi = draw(pick(WIDE, WIDE, WIDE, WIDE, (0, 9), (3, 12), (5, 5)))
    p = params(
        direction=draw(pick(3, 1, 2, 3, 0)),
        time_lo=time_lo,
        time_hi=time_hi,
        max_hops=draw(pick(BIG, BIG, BIG, 3, 2, 1, 0)),
        max_results=draw(pick(BIG, BIG, BIG, 10, 3, 1, 0)),
        max_edge_visits=draw(pick(BIG, BIG, BIG, 60, 20, 5, 1, 0)),
        hub_postings=draw(pick(BIG, 8, 3, 0)),
        hub_window_s=draw(pick(BIG, 3, 1, 0, -1)),
        max_per_entity=draw(pick(BIG, 4, 2, 1, 0)),
        min_score=draw(pick(0.0, 0.0, 0.05, 0.3)),
        time_scale_s=draw(pick(0.0, 3.5, 1.0, -1.0)),
    )
    return seeds, scores, p


def dense_case(seed):
    """Graph, seeds and knobs all from one RNG seed: mostly permissive knobs,
    so most cases walk several hops through links and entities."""
    rng = np.random.default_rng(seed)
    g = dense_graph(seed)
    n = len(g["times"])
    k = int(rng.integers(1, 6))
    seeds = rng.integers(-1, n + 1, k).tolist()
    scores = rng.choice([1.0, 0.5, rng.random()], k).tolist()

    def knob(common, *rare):
        return common if rng.random() < 0.7 else rare[rng.integers(len(rare))]

    p = params(
        direction=int(rng.integers(1, 4)),
        max_hops=knob(BIG, 1, 2, 3),
        max_results=knob(BIG, 1, 5, 12),
        max_edge_visits=knob(BIG, 3, 10, 40),
        hub_postings=knob(BIG, 2, 5, 10),
        hub_window_s=knob(BIG, 0, 1, 3),
        max_per_entity=knob(BIG, 1, 2, 4),
        min_score=knob(0.0, 0.01, 0.2),
        time_scale_s=knob(2.5, 0.0, 1.0),
    )
    if rng.random() < 0.2:
        p["time_lo"], p["time_hi"] = 3, 11
    return g, seeds, scores, p


def assert_same(got, want):
    names = ("rows", "scores", "parent", "via_kind", "via_id", "hops", "stats")
    for name, a, b in zip(names, got, want):
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)


# ---------------------------------------------------------------------------
# property tests
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    warm_up()  # compile (or load the cache) once, outside hypothesis timing


@SETTINGS
@given(st.data())
def test_best_first_matches_reference(data):
    g = data.draw(graphs())
    seeds, scores, p = data.draw(queries(g))
    got = run_bf(g, seeds, scores, p)
    assert_same(got, ref_best_first(g, seeds, scores, p))

    rows, sc, parent, kind, via, hops, stats = got
    times, allowed = g["times"], g["allowed"]
    event(f"rows: {min(len(rows), 5)}+; entity edges: {bool((kind == 2).any())}; "
          f"link edges: {bool((kind == 1).any())}; budget hit: {bool(stats[3])}")
    assert len(rows) <= p["max_results"]
    assert stats[1] <= max(p["max_edge_visits"], 0)
    assert len(set(rows.tolist())) == len(rows)
    assert all(allowed[r] for r in rows)
    assert all(allowed[q] for q in parent if q >= 0)
    assert all(p["time_lo"] <= times[r] <= p["time_hi"] for r in rows)
    assert all(h <= p["max_hops"] for h in hops)
    pos = {r: i for i, r in enumerate(rows.tolist())}
    for r, q, h in zip(rows, parent, hops):
        if q < 0:
            continue
        assert pos[q] < pos[r]  # parents are finalized first
        assert hops[pos[q]] + 1 == h
        if p["direction"] == 1:
            assert times[r] <= times[q]
        if p["direction"] == 2:
            assert times[r] >= times[q]


@SETTINGS
@given(st.integers(0, 2**32 - 1))
def test_best_first_matches_reference_dense(seed):
    g, seeds, scores, p = dense_case(seed)
    got = run_bf(g, seeds, scores, p)
    assert_same(got, ref_best_first(g, seeds, scores, p))
    kind, stats = got[3], got[6]
    event(f"rows: {min(len(got[0]), 8)}+; entity edges: {bool((kind == 2).any())}; "
          f"link edges: {bool((kind == 1).any())}; budget hit: {bool(stats[3])}")


@SETTINGS
@given(st.integers(0, 2**32 - 1))
def test_ppr_matches_reference_dense(seed):
    g, seeds, scores, p = dense_case(seed)
    alpha, eps = (0.15, 1e-3) if seed % 2 else (0.3, 1e-2)
    got = run_ppr(g, seeds, scores, p, alpha, eps)
    want = ref_ppr(g, seeds, scores, p, alpha, eps)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
    assert_same(got[:1] + got[2:], want[:1] + want[2:])


@SETTINGS
@given(st.data())
def test_ppr_matches_reference(data):
    g = data.draw(graphs())
    seeds, scores, p = data.draw(queries(g))
    alpha = data.draw(st.sampled_from([0.15, 0.5]))
    eps = data.draw(st.sampled_from([1e-4, 1e-2, 0.2]))
    got = run_ppr(g, seeds, scores, p, alpha, eps)
    want = ref_ppr(g, seeds, scores, p, alpha, eps)
    # the reference mirrors the float operations, so rows and order must
    # agree exactly; scores get a tolerance (PPR sums many small terms)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
    assert_same(got[:1] + got[2:], want[:1] + want[2:])
    assert all(g["allowed"][r] for r in got[0])
    assert all(g["allowed"][q] for q in got[2] if q >= 0)
    assert float(got[1].sum()) <= 1.0 + 1e-5  # mass only leaks, never grows


# ---------------------------------------------------------------------------
# targeted tests
# ---------------------------------------------------------------------------


def chain(n, step=10):
    """Events 0..n-1 at times 0, step, ...; each links back to its predecessor."""
    times = [i * step for i in range(n)]
    links = [(i, i - 1, 0) for i in range(1, n)]
    return times, links


def test_empty_graph_and_no_seeds():
    g = make_graph([], [], [], [1.0], [], [])
    out = run_bf(g, [0, -1], [1.0, 1.0], params())
    assert len(out[0]) == 0 and out[6].tolist() == [0, 0, 0, 0]
    g = make_graph(*chain(3)[:1], [1, 1, 1], chain(3)[1], [1.0], [[], [], []], [])
    out = run_bf(g, [], [], params())
    assert len(out[0]) == 0


def test_back_and_forward_follow_time():
    times, links = chain(6)
    g = make_graph(times, [1] * 6, links, [0.5], [[]] * 6, [])
    back = run_bf(g, [3], [1.0], params(direction=1))
    assert back[0].tolist() == [3, 2, 1, 0]
    assert back[1].tolist() == [1.0, 0.5, 0.25, 0.125]
    assert back[2].tolist() == [-1, 3, 2, 1]
    assert back[3].tolist() == [0, 1, 1, 1] and back[5].tolist() == [0, 1, 2, 3]
    fwd = run_bf(g, [3], [1.0], params(direction=2))
    assert fwd[0].tolist() == [3, 4, 5]
    both = run_bf(g, [3], [1.0], params(direction=3))
    assert sorted(both[0].tolist()) == list(range(6))


def test_link_against_time_is_dropped_unless_both():
    # link 0 -> 1 although event 1 is later: "back" must not follow it
    g = make_graph([0, 10], [1, 1], [(0, 1, 0)], [1.0], [[], []], [])
    assert run_bf(g, [0], [1.0], params(direction=1))[0].tolist() == [0]
    assert run_bf(g, [0], [1.0], params(direction=3))[0].tolist() == [0, 1]


def test_disallowed_rows_are_never_touched():
    times, links = chain(5)
    allowed = [1, 1, 0, 1, 1]
    g = make_graph(times, allowed, links, [1.0], [[0]] * 5, [1.0])
    rows, _, parent, *_ = run_bf(g, [4, 2], [1.0, 1.0], params())
    assert 2 not in rows.tolist() and 2 not in parent.tolist()
    assert sorted(rows.tolist()) == [0, 1, 3, 4]  # reached via the entity


def test_duplicate_seeds_keep_best_score():
    g = make_graph([0, 1], [1, 1], [], [1.0], [[], []], [])
    out = run_bf(g, [1, 0, 1], [0.2, 0.5, 0.9], params())
    assert out[0].tolist() == [1, 0]
    assert out[1].tolist() == [np.float32(0.9), np.float32(0.5)]
    assert out[6][2] == 3  # pushes: 1@0.2, 0@0.5, 1@0.9


def test_hub_window_limits_entity_walk():
    n = 1000
    times = list(range(n))
    g = make_graph(times, [1] * n, [], [1.0], [[0]] * n, [1.0])
    p = params(direction=3, max_hops=1, hub_postings=100, hub_window_s=10)
    rows, *_, stats = run_bf(g, [500], [1.0], p)
    assert sorted(rows.tolist()) == list(range(490, 511))
    assert stats[1] == 21  # u itself plus 20 neighbours, nothing beyond
    back = run_bf(g, [500], [1.0], dict(p, direction=1))[0]
    assert sorted(back.tolist()) == list(range(490, 501))
    # not a hub: the whole list is reachable, nearest first
    rows = run_bf(g, [500], [1.0], dict(p, hub_postings=n, max_per_entity=4,
                                          time_scale_s=10.0))[0]
    assert rows.tolist() == [500, 499, 501, 498, 502]


def test_equal_time_rows_are_reachable_in_both_single_directions():
    # four events at the same second sharing one entity: "back" and "forward"
    # both allow dt == 0, like the link time check, whatever the row order
    g = make_graph([5, 5, 5, 5], [1] * 4, [], [1.0], [[0]] * 4, [1.0])
    for direction in (1, 2, 3):
        rows = run_bf(g, [2], [1.0], params(direction=direction, max_hops=1))[0]
        assert sorted(rows.tolist()) == [0, 1, 2, 3]


def test_max_per_entity_counts_only_eligible_rows():
    times = [0, 1, 2, 3, 4]
    allowed = [1, 0, 0, 1, 1]
    g = make_graph(times, allowed, [], [1.0], [[0]] * 5, [1.0])
    p = params(direction=1, max_per_entity=1)
    rows, _, parent, *_, stats = run_bf(g, [4], [1.0], p)
    assert rows.tolist() == [4, 3, 0]  # 3 -> (1, 2 disallowed) -> 0
    assert parent.tolist() == [-1, 4, 3]


def test_entity_decay_and_weight():
    g = make_graph([0, 10], [1, 1], [], [1.0], [[0], [0]], [0.5])
    out = run_bf(g, [1], [1.0], params(time_scale_s=10.0))
    assert out[0].tolist() == [1, 0]
    assert out[1][1] == np.float32(0.5 * (1.0 / (1.0 + 10.0 / 10.0)))
    assert out[3].tolist() == [0, 2] and out[4].tolist() == [-1, 0]


def test_edge_budget_is_respected():
    times, links = chain(100)
    g = make_graph(times, [1] * 100, links, [1.0], [[]] * 100, [])
    rows, *_, stats = run_bf(g, [99], [1.0], params(direction=1, max_edge_visits=5))
    assert stats[1] == 5 and stats[3] == 1
    # the 5th edge's target is still queued and popped after the budget ran out
    assert rows.tolist() == [99, 98, 97, 96, 95, 94]
    full = run_bf(g, [99], [1.0], params(direction=1, max_edge_visits=99))[6]
    assert full[1] == 99 and full[3] == 0


def test_max_results_and_min_score():
    times, links = chain(50)
    g = make_graph(times, [1] * 50, links, [0.5], [[]] * 50, [])
    assert len(run_bf(g, [49], [1.0], params(max_results=7))[0]) == 7
    assert len(run_bf(g, [49], [1.0], params(max_results=0))[0]) == 0
    out = run_bf(g, [49], [1.0], params(min_score=0.1))
    assert out[1].min() >= 0.1 and len(out[0]) == 4  # 1, .5, .25, .125


def test_max_hops():
    times, links = chain(10)
    g = make_graph(times, [1] * 10, links, [1.0], [[]] * 10, [])
    out = run_bf(g, [9], [1.0], params(max_hops=2))
    assert out[0].tolist() == [9, 8, 7] and out[5].tolist() == [0, 1, 2]


def test_ppr_ranks_close_nodes_first_and_parents_are_acyclic():
    times, links = chain(8)
    g = make_graph(times, [1] * 8, links, [1.0], [[0]] * 8, [0.5])
    rows, sc, parent, kind, via, hops, stats = run_ppr(
        g, [7], [1.0], params(direction=1, time_scale_s=10.0), 0.2, 1e-6)
    assert rows[0] == 7 and sorted(rows.tolist()) == list(range(8))
    assert np.all(np.diff(sc) <= 0)
    pos = {r: i for i, r in enumerate(rows.tolist())}
    for r in rows.tolist():  # every chain ends at the seed
        seen = set()
        while parent[pos[r]] >= 0:
            assert r not in seen
            seen.add(r)
            r = int(parent[pos[r]])
        assert r == 7


def test_batch_equals_separate_calls():
    """expand_best_first_batch returns exactly the concatenation of single calls."""
    from fastctx.kernels.expand import expand_best_first_batch
    rng = np.random.default_rng(7)
    n = 300
    times = np.sort(rng.integers(0, 10_000, n)).astype(np.int64)
    allowed = (rng.random(n) > 0.1).astype(np.uint8)
    src = rng.integers(0, n, 400)
    dst = rng.integers(0, n, 400)
    order = np.argsort(src, kind="stable")
    out_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=out_ptr[1:])
    out_dst, out_type = dst[order].astype(np.int64), rng.integers(0, 7, 400).astype(np.int8)
    order_in = np.lexsort((src, dst))
    in_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(dst, minlength=n), out=in_ptr[1:])
    in_src, in_type = src[order_in].astype(np.int64), out_type[np.argsort(order)][order_in]
    ent = rng.integers(0, 40, n)
    ev_ptr = np.arange(n + 1, dtype=np.int64)
    ev_ent = ent.astype(np.int64)
    post = np.lexsort((np.arange(n), times, ent))
    ent_ptr = np.zeros(41, np.int64)
    np.cumsum(np.bincount(ent, minlength=40), out=ent_ptr[1:])
    ent_rows = post.astype(np.int64)
    link_w = np.full(7, 0.8, np.float32)
    ent_w = rng.random(40).astype(np.float32)
    rest = (3, -10, 20_000, 4, 50, 500, 20, 1000, 8, 0.01, 3600.0)
    graph = (times, allowed, out_ptr, out_dst, out_type, in_ptr, in_src, in_type, link_w,
             ev_ptr, ev_ent, ent_ptr, ent_rows, ent_w)
    groups = [rng.integers(0, n, k).astype(np.int64) for k in (1, 3, 0, 2)]
    seed_ptr = np.zeros(len(groups) + 1, np.int64)
    np.cumsum([len(g) for g in groups], out=seed_ptr[1:])
    seeds = np.concatenate(groups)
    scores = np.ones(len(seeds), np.float32)
    res_ptr, *batch = expand_best_first_batch(seed_ptr, seeds, scores, *graph, *rest)
    for gi, grp in enumerate(groups):
        single = expand_best_first(grp, np.ones(len(grp), np.float32), *graph, *rest)
        lo, hi = res_ptr[gi], res_ptr[gi + 1]
        for got, want in zip(batch, single[:6]):
            np.testing.assert_array_equal(got[lo:hi], want)
    # the named entry is the same call: every field lands on its parameter
    from fastctx.kernels.expand import ExpandGraph, ExpandLimits, expand_batch
    named = expand_batch(seed_ptr, seeds, scores, ExpandGraph(*graph), ExpandLimits(*rest))
    for got, want in zip(named, (res_ptr, *batch)):
        np.testing.assert_array_equal(got, want)
    assert ExpandLimits(*rest).hub_window_s == 1000 and ExpandGraph(*graph).ent_weight is ent_w


def test_ppr_batch_equals_separate_calls():
    """expand_ppr_push_batch returns exactly the concatenation of single calls."""
    from fastctx.kernels.expand import expand_ppr_push_batch
    rng = np.random.default_rng(11)
    n = 200
    times = np.sort(rng.integers(0, 5_000, n)).astype(np.int64)
    allowed = np.ones(n, np.uint8)
    src, dst = rng.integers(0, n, 300), rng.integers(0, n, 300)
    order = np.argsort(src, kind="stable")
    out_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=out_ptr[1:])
    out_type = rng.integers(0, 7, 300).astype(np.int8)
    in_order = np.lexsort((src, dst))
    in_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(dst, minlength=n), out=in_ptr[1:])
    ent = rng.integers(0, 30, n)
    ent_ptr = np.zeros(31, np.int64)
    np.cumsum(np.bincount(ent, minlength=30), out=ent_ptr[1:])
    graph = (times, allowed, out_ptr, dst[order].astype(np.int64), out_type[order], in_ptr,
             src[in_order].astype(np.int64), out_type[in_order], np.full(7, 0.8, np.float32),
             np.arange(n + 1, dtype=np.int64), ent.astype(np.int64), ent_ptr,
             np.lexsort((np.arange(n), times, ent)).astype(np.int64), rng.random(30).astype(np.float32))
    rest = (3, -10, 10_000, 4, 50, 500, 20, 1000, 8, 0.0, 3600.0, 0.2, 1e-3)
    groups = [rng.integers(0, n, k).astype(np.int64) for k in (2, 0, 1)]
    seed_ptr = np.zeros(len(groups) + 1, np.int64)
    np.cumsum([len(g) for g in groups], out=seed_ptr[1:])
    res_ptr, *batch = expand_ppr_push_batch(seed_ptr, np.concatenate(groups),
                                            np.ones(seed_ptr[-1], np.float32), *graph, *rest)
    for gi, grp in enumerate(groups):
        single = expand_ppr_push(grp, np.ones(len(grp), np.float32), *graph, *rest)
        lo, hi = res_ptr[gi], res_ptr[gi + 1]
        for got, want in zip(batch, single[:6]):
            np.testing.assert_array_equal(got[lo:hi], want)


def test_postings_order_equals_the_three_key_sort():
    """Shard postings merged across segments: the linear merge path (segments apart in time) and
    the fallback (a later segment holding earlier events) both equal the plain three-key sort."""
    from fastctx.shard import postings_order
    rng = np.random.default_rng(5)
    for overlap in (False, True):
        segs, base, times = [], 0, []
        for k in range(4):
            n = int(rng.integers(1, 60))
            t0 = (0 if overlap else 1000 * k) + rng.integers(0, 500 if overlap else 990, n)
            times.append(np.sort(t0))                       # a segment's rows are in time order
            pairs = {(int(e), int(r)) for e, r in zip(rng.integers(0, 12, 3 * n), rng.integers(0, n, 3 * n))}
            e, r = np.array(sorted(pairs)).T                # sorted by entity, then row
            segs.append((e, r + base))
            base += n
        times = np.concatenate(times)
        ent = np.concatenate([e for e, _ in segs]).astype(np.int64)
        rows = np.concatenate([r for _, r in segs]).astype(np.int64)
        want = np.lexsort((rows, times[rows], ent))
        got = postings_order(ent, rows, times)
        assert np.array_equal(rows[got], rows[want]) and np.array_equal(ent[got], ent[want])
