"""The engine's head-choice signals on hand-made vectors: query-specific similarity, chain
relevance and recency (each checked against a direct computation or an obvious ordering)."""
from __future__ import annotations

import numpy as np
import pytest

from fastctx.corpus import LINK_TYPES

from fastctx import heads, pooling
from fastctx.answer import DIRECTIONS, AnswerParams, Engine
from fastctx.filters import Filters


def _unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def test_specific_similarity_is_centred_cosine():
    rng = np.random.default_rng(0)
    vecs = np.array([_unit(x) for x in rng.normal(size=(20, 8))])
    q = _unit(rng.normal(size=8))
    got = heads.specific_similarity(vecs, q)
    mean = vecs.mean(axis=0)
    want = [float(np.dot(v - mean, q - mean) / (np.linalg.norm(v - mean) * np.linalg.norm(q - mean))) for v in vecs]
    assert np.allclose(got, want)


def test_specific_similarity_prefers_what_only_the_query_and_one_hit_share():
    # every hit shares the "topic" axis with the query; one also shares the query's own detail
    topic, detail = np.eye(6)[0], np.eye(6)[1]
    rng = np.random.default_rng(1)
    generic = [_unit(topic + 0.1 * rng.normal(size=6) * (np.arange(6) >= 2)) for _ in range(15)]
    specific = _unit(0.5 * topic + 0.8 * detail + 0.3 * np.eye(6)[5])
    vecs = np.array(generic + [specific])
    q = _unit(topic + 0.5 * detail)
    assert np.argmax(vecs @ q) != len(vecs) - 1                                  # plain: a look-alike
    assert np.argmax(heads.specific_similarity(vecs, q)) == len(vecs) - 1     # centred: the one


def test_specific_similarity_falls_back_to_plain_with_few_hits():
    vecs = np.array([_unit([1, 0, 0]), _unit([1, 1, 0])])
    q = _unit([1, 0.2, 0])
    assert np.allclose(heads.specific_similarity(vecs, q), vecs @ q)


class _Vectors:
    def __init__(self, table):
        self.table = table

    def vectors(self, rows):
        return np.array([self.table[int(r)] for r in rows]).reshape(len(rows), -1)


def test_chain_relevance_is_evidence_weighted_query_similarity_capped_at_one_unit():
    q = _unit([1, 0, 0])
    table = {0: _unit([1, 0, 0]), 1: _unit([1, 1, 0]), 2: _unit([0, 1, 0]), 3: _unit([-1, 0, 0]), 9: q}
    g = _Vectors(table)
    alone = (np.array([9]), np.array([1.0], np.float32))
    small = (np.array([9, 1]), np.array([1.0, 0.5], np.float32))                 # mass 0.5
    big = (np.array([9, 1, 2, 3]), np.array([1.0, 0.8, 0.8, 0.4], np.float32))  # mass 2.0
    got = heads.chain_relevance(g, q, [alone, small, big])
    s1 = float(table[1] @ q)
    assert got[0] == 0.0                                   # nothing reached: no evidence
    assert np.isclose(got[1], s1 * 0.5)                    # mean similarity x mass (< 1)
    # negative similarities count as zero; mass above one counts as one
    assert np.isclose(got[2], (0.8 * s1 + 0.8 * 0.0 + 0.4 * 0.0) / 2.0)


def test_chain_relevance_counts_causal_evidence_past_the_first_unit_up_to_the_cap():
    """Two candidates with the same reached events and path scores (mass 2.0): the one reached
    through references counts up to `mass_cap` units, the one reached through replies only one."""
    q = _unit([1, 0, 0])
    g = _Vectors({1: _unit([1, 1, 0]), 2: _unit([1, 0.5, 0]), 9: q})
    rows, scores = np.array([9, 1, 2]), np.array([1.0, 1.0, 1.0], np.float32)
    kind = np.array([0, 1, 1])                                  # reached through links
    ref = np.full(3, LINK_TYPES.index("references"))
    reply = np.full(3, LINK_TYPES.index("reply"))
    linked, chatted = (rows, scores, rows, kind, ref), (rows, scores, rows, kind, reply)
    mean = (float(g.table[1] @ q) + float(g.table[2] @ q)) / 2.0
    got = heads.chain_relevance(g, q, [linked, chatted], 1.5)
    assert np.isclose(got[0], mean * 1.5)                      # 1 + min(2 - 1, 0.5)
    assert np.isclose(got[1], mean * 1.0)                      # replies add nothing past one unit
    assert np.allclose(heads.chain_relevance(g, q, [linked, chatted], 1.0), mean)


def test_recency_inside_the_window_by_direction():
    times = np.array([100, 150, 200])
    f = Filters(time_from=100, time_to=200)
    assert np.allclose(heads.recency(times, f, DIRECTIONS["back"]), [0, 0.5, 1])
    assert np.allclose(heads.recency(times, f, DIRECTIONS["forward"]), [1, 0.5, 0])
    assert np.allclose(heads.recency(times, f, DIRECTIONS["both"]), 0)
    assert np.allclose(heads.recency(times, Filters(), DIRECTIONS["back"]), 0)   # no window, no prior


def test_chain_answer_is_empty_not_an_error_when_every_expansion_came_back_empty():
    """A sharded answer whose candidate heads all live on a shard that stopped answering: the
    expansions are empty, and the answer is empty (flagged partial by the caller), not a crash."""
    from fastctx.filters import Filters

    class Down:
        def vectors(self, rows):
            return np.eye(4, dtype=np.float32)[np.asarray(rows, np.int64) % 4]

        def times(self, rows):
            return np.asarray(rows, np.int64) * 10

        def tokens(self, rows):   # like the coordinator: rows of a missing shard never fit a budget
            return np.full(len(rows), 2 ** 60, np.int64)

        def expand(self, seeds, scores, direction, t_lo, t_hi, as_of):
            e = tuple(np.zeros(0, t) for t in (np.int64, np.float32, np.int64, np.int8, np.int64, np.int32))
            return [e for _ in seeds]

    eng = Engine(params=AnswerParams(), graph=Down())
    rows, sims = np.array([3, 1, 2]), np.array([0.9, 0.5, 0.4])
    picked, current = eng._chain(Down(), _unit([1, 0, 0, 0]), rows, sims, np.zeros(3), Filters(), 1, 100, False)
    assert picked == [] and current is None


class _OneHopGraph:
    """Every head reaches one event (row + 100, just before it) through one link of type `link`;
    20 hits with falling similarity; every event costs one token."""

    def __init__(self, link: str):
        # "entity:<name>": the hop goes through a shared entity of that name instead of a link
        self.entity = link.split(":", 1)[1] if link.startswith("entity:") else None
        self.link = 7 if self.entity else LINK_TYPES.index(link)
        self.asked = []

    def entity_names(self, pairs):
        self.asked += list(pairs)
        return [self.entity for _ in pairs]

    def vectors(self, rows):
        rows = np.asarray(rows, np.int64)
        v = np.zeros((len(rows), 32), np.float32)
        v[np.arange(len(rows)), rows % 32] = 1.0
        return v

    def times(self, rows):
        rows = np.asarray(rows, np.int64)
        return np.where(rows >= 100, (rows - 100) * 10 - 5, rows * 10)

    def kinds(self, rows):   # one kind: the asked kind tells nothing
        return np.zeros(len(rows), np.int64)

    def tokens(self, rows):
        return np.ones(len(rows), np.int64)

    def events(self, rows, scores, as_of):   # no payloads: the chain has no people to ask about
        return [None for _ in rows]

    def expand(self, seeds, scores, direction, t_lo, t_hi, as_of):
        return [(np.array([s, s + 100], np.int64), np.array([1.0, 0.9], np.float32), np.array([-1, s], np.int64),
                 np.array([0, 2 if self.entity else 1], np.int8), np.array([0, self.link], np.int64),
                 np.array([0, 1], np.int32))
                for s in np.asarray(seeds, np.int64).tolist()]


def _hop_answer(link: str, budget: int = 1000, g=None, params=AnswerParams()):
    from fastctx.filters import Filters
    g = g or _OneHopGraph(link)
    rows = np.arange(20, dtype=np.int64)
    sims = np.linspace(0.9, 0.1, 20)
    q = np.zeros(32, np.float32)
    q[0] = 1.0
    picked, _ = Engine(params=params, graph=g)._chain(g, q, rows, sims, np.zeros(20), Filters(), 1, budget, False)
    return [r for r, _, _ in picked]


def test_a_chain_with_causal_structure_ends_the_answer():
    """The best head reaches an event through a reference (causal evidence >= the unit): the answer
    is the pooled chains, not padded with the other hits."""
    got = _hop_answer("references")
    assert got[:2] == [0, 100]
    assert len(got) < 20


@pytest.mark.parametrize("link", ["reply", "same_actor", "co_mention"])
def test_replies_alone_are_no_causal_chain_so_direct_hits_fill_the_budget(link):
    """Reply links are conversation structure (as are same-actor links, and co-mentions say only
    that the same files changed): a best chain made of them explains nothing causally, so every
    direct hit gets into the answer (budget permitting), best first."""
    got = _hop_answer(link)
    assert set(range(20)) <= set(got)
    assert len(got) == len(set(got))
    assert len(_hop_answer(link, budget=7)) == 7   # padding stops at the budget


def test_without_causal_structure_the_best_direct_hits_come_before_the_chains():
    """Replies alone (confidence 0) and a budget the pooled chains could fill on their own: the
    share `hits_first` of it goes to the best direct hits first; without it, the best head's
    reply follows the head."""
    from dataclasses import replace
    got = _hop_answer("reply", budget=10)
    assert len(got) == 10 and all(r < 20 for r in got[:5])
    assert _hop_answer("reply", budget=10, params=replace(AnswerParams(), hits_first=0.0))[:2] == [0, 100]


@pytest.mark.parametrize("temperature", [0.03, 1.0])
def test_the_answer_is_the_chains_of_candidates_weighted_at_least_pool_min_weight(monkeypatch, temperature):
    """Each candidate i reaches i + 100 by a reference (a causal chain: the answer ends with the
    pooled chains). For thresholds between the candidates' pooling weights, the answer is exactly
    the chains of the candidates weighted at least `pool_min_weight`; the default is 0.001."""
    from dataclasses import replace
    seen = {}
    inherit = pooling.inherit

    def spy(rows, cands, weights, min_path=0.0):
        out = inherit(rows, cands, weights, min_path)
        seen["weights"] = {int(rows[i]): w for (_, i, _), w in zip(cands, out)}
        return out

    monkeypatch.setattr(pooling, "inherit", spy)
    base = replace(AnswerParams(), pool_temperature=temperature)
    everything = _hop_answer("references", params=replace(base, pool_min_weight=0.0))
    weights = seen["weights"]
    levels = sorted(set(weights.values()) | {0.0}) + [1.5]
    for lo, hi in zip(levels, levels[1:]):
        cut = min((lo + hi) / 2, 1.0)
        got = _hop_answer("references", params=replace(base, pool_min_weight=cut))
        want = {r + d for r, w in weights.items() if w >= cut for d in (0, 100)}
        assert set(got) == want and set(got) <= set(everything), cut
    assert _hop_answer("references", params=replace(base, pool_min_weight=1.0)) == [0, 100]
    assert AnswerParams().pool_min_weight == 0.001


def test_the_best_chain_stays_at_the_highest_cut_when_its_weight_rounds_below_one():
    """Below full confidence the best candidate's weight is scaled by its support in time, which
    can round to just under 1 (here: a look-alike two years earlier). At `pool_min_weight` 1 the
    answer is still the best chain and its direct hits, not an error."""
    from dataclasses import replace
    got = _hop_answer("reply", g=_YearsApartGraph("reply"), params=replace(AnswerParams(), pool_min_weight=1.0))
    assert {0, 100} <= set(got) and 101 not in got


def test_current_follows_a_version_of_the_fact_not_a_discussion_that_mentions_it(tmp_path):
    """The hit most like the question is a discussion mentioning the decision; the current fact is
    still the latest decision version on that slot, reached from a version (not the discussion)."""
    from conftest import event, write_corpus
    from fastctx.index import Index, build

    topic, other = _unit([1, 0, 0, 0]), _unit([0, 0, 1, 0])
    recs = [event(0, kind="decision", entities=["decision:vault"]),
            event(1, kind="decision", entities=["decision:vault"], links=[("e000000", "supersedes")]),
            event(2, kind="discussion", entities=["decision:vault"]),
            event(3, kind="decision", entities=["decision:other"])]
    vecs = np.array([_unit([1, 0.3, 0, 0]), _unit([1, 0.35, 0, 0]), _unit([1, 0.05, 0, 0]), other],
                    np.float32)
    build(write_corpus(tmp_path / "c", recs, vecs), tmp_path / "i")
    a = Index(tmp_path / "i").query(topic, type="current", budget_tokens=1000)
    assert a.current.id == "e000001"
    assert [e.id for e in a.events][:1] == ["e000000"] and "e000002" in [e.id for e in a.events]


def test_specific_seeds_find_the_asked_event_that_plain_similarity_ranks_below_the_look_alikes(tmp_path):
    """Three hundred look-alikes share the query's common words; the asked event shares fewer of
    them and the query's specific ones. Plain similarity ranks it below the first seed_k hits; a
    second search with the query less those hits' mean (`specific_seeds`) brings it in, when the
    allowed rows outnumber seed_k enough (`specific_allowed_ratio`)."""
    from dataclasses import replace

    from conftest import event, write_corpus
    from fastctx.index import Index, build

    rng = np.random.default_rng(3)
    common, specific = np.eye(32)[0], np.eye(32)[1]
    looks = common + rng.normal(size=(300, 32)) * (np.arange(32) >= 2) / 20
    asked = 0.3 * common + specific
    vecs = np.vstack([looks, asked])
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    recs = [event(i, time=1_700_000_000 + 3600 * i, tokens=10) for i in range(len(vecs))]
    build(write_corpus(tmp_path / "c", recs, vecs), tmp_path / "i")
    idx = Index(tmp_path / "i")
    q = _unit(common + 0.6 * specific).astype(np.float32)
    asked_id = f"e{len(vecs) - 1:06d}"
    assert asked_id not in idx.search(q, k=8).ids()          # plain top 8: look-alikes

    def answer(**kw):
        params = replace(AnswerParams(), seed_k=8, candidates=8, **kw)
        a = Engine(idx, params=params).run(q, "chain", Filters(), "back", 10)
        return [e.id for e in a.events]
    assert asked_id not in answer(specific_seeds=0)
    assert answer(specific_seeds=8) == [asked_id]
    # asked only when the allowed rows (301) are at least specific_allowed_ratio x seed_k
    assert answer(specific_seeds=8, specific_allowed_ratio=301 / 8) == [asked_id]
    assert asked_id not in answer(specific_seeds=8, specific_allowed_ratio=302 / 8)
    assert idx.allowed_count(Filters(), 8, idx.view()) == 301


def test_many_candidates_where_the_hits_are_a_small_sample_of_many_allowed_rows(tmp_path):
    """The first walk expands `candidates` heads, or `many_candidates` where the seed search filled
    seed_k out of at least specific_allowed_ratio times as many allowed rows (the same test that
    asks the second, centred search): among many look-alikes the asked event's prior ranks lower."""
    from dataclasses import replace

    from conftest import event, write_corpus
    from fastctx.index import Index, build

    rng = np.random.default_rng(5)
    vecs = rng.normal(size=(301, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    recs = [event(i, time=1_700_000_000 + 3600 * i, tokens=10) for i in range(len(vecs))]
    build(write_corpus(tmp_path / "c", recs, vecs), tmp_path / "i")
    idx = Index(tmp_path / "i")
    q = vecs[7] + vecs[9]

    def first_walk(**kw):
        params = replace(AnswerParams(), seed_k=8, candidates=2, many_candidates=5, specific_seeds=0, **kw)
        eng = Engine(idx, params=params)
        walked, expand = [], eng.g.expand
        eng.g.expand = lambda seeds, *a: walked.append(list(seeds)) or expand(seeds, *a)
        eng.run(q, "chain", Filters(), "back", 100)
        return walked[0]
    wide = first_walk(specific_allowed_ratio=301 / 8)
    narrow = first_walk(specific_allowed_ratio=302 / 8)
    hits = set(idx.search(q, k=8).rows[0].tolist())
    assert len(set(wide)) == 5 and len(set(narrow)) == 2 and set(wide) | set(narrow) <= hits


def test_index_answer_params_reach_the_engine(tmp_path):
    from conftest import event, write_corpus
    from fastctx.index import Index, build

    vecs = np.eye(8, dtype=np.float32)
    build(write_corpus(tmp_path / "c", [event(i, tokens=10) for i in range(8)], vecs), tmp_path / "i")
    params = AnswerParams(seed_k=4, relevance_mass=1.0)
    assert Index(tmp_path / "i", answer_params=params).engine().params is params
    assert Index(tmp_path / "i").engine().params == AnswerParams()


def test_a_shared_session_is_conversation_structure_not_a_causal_chain():
    """Turns of one chat session (a context entity, `AnswerParams.context_prefixes`) reach each
    other through the session entity: like replies, that explains nothing causally, so direct
    hits still fill the budget; a shared rare entity of another kind ends the answer. The name is
    asked through the graph once per (parent, entity), not per event."""
    g = _OneHopGraph("entity:session:c1/4")
    got = _hop_answer("", g=g)
    assert set(range(20)) <= set(got)
    assert g.asked == [(0, 7)]
    ticket = _hop_answer("entity:ticket:PAY-7")
    assert ticket[:2] == [0, 100] and len(ticket) < 20


def test_time_coherence_matches_a_plain_reading_and_favours_candidates_that_agree_in_time():
    rng = np.random.default_rng(7)
    times = rng.integers(0, 400 * 86_400, 40)
    weights = rng.random(40)
    got = pooling.time_coherence(times, times, weights.tolist(), 30 * 86_400)
    want = [sum(w / (1 + abs(int(t) - int(u)) / (30 * 86_400)) for u, w in zip(times, weights)) for t in times]
    assert np.allclose(got, np.minimum(np.array(want) / want[0], 1.0))
    # the best candidate and a runner-up share one week; a look-alike stands alone two years off,
    # another shares the best one's week: the lone one loses most of its weight, the others little
    day = 86_400
    at = np.array([0, 2 * day, 730 * day, 5 * day])
    support = pooling.time_coherence(at, at, [1.0, 0.6, 0.6, 0.3], 30 * day)
    assert support[0] == 1.0 and min(support[1], support[3]) > 0.9 and support[2] < 0.5
    # a best candidate standing alone takes nothing from a cluster of weaker ones
    at = np.array([0, 730 * day, 731 * day])
    alone = pooling.time_coherence(at, at, [1.0, 0.6, 0.6], 30 * day)
    assert np.all(alone == 1.0)
    # any time can be asked, not only the candidates': between them, support falls with distance
    mid = pooling.time_coherence(np.array([0, 30 * day, 365 * day]), at, [1.0, 0.6, 0.6], 30 * day)
    assert mid[0] == 1.0 and 1.0 >= mid[1] > mid[2]


class _YearsApartGraph(_OneHopGraph):
    """`_OneHopGraph` with its events a day apart, except the second-best hit (row 1), two years
    earlier: a look-alike from another period."""

    def times(self, rows):
        rows = np.asarray(rows, np.int64)
        return np.where(rows % 100 == 1, -730, rows % 100) * 86_400


def test_without_causal_structure_direct_hits_from_the_best_ones_period_come_first():
    """Replies alone (confidence 0): the direct hits are ranked by fused relevance scaled, like the
    candidates' pooling weights, towards their support in time, so the look-alike from two years
    before falls behind the best hit's neighbours in time; without time coherence it comes second."""
    from dataclasses import replace
    got = _hop_answer("reply", budget=6, g=_YearsApartGraph("reply"))
    assert got[:3] == [0, 2, 3] and 1 not in got
    plain = replace(AnswerParams(), time_coherence_days=0.0)
    assert _hop_answer("reply", budget=6, g=_YearsApartGraph("reply"), params=plain)[:3] == [0, 1, 2]


def test_later_cos_is_the_best_cosine_to_a_later_hit():
    """The sliced product (latest pool hits first, each slice against the hits later than its
    earliest member) equals the full masked product."""
    rng = np.random.default_rng(3)
    for n, n_pool, ties in ((300, 40, False), (64, 64, True), (9, 3, True), (5, 5, False)):
        vecs = rng.standard_normal((n, 16)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        times = rng.integers(0, 20 if ties else 10**6, n)
        pool = rng.permutation(n)[:n_pool]
        full = (vecs[pool] @ vecs.T).astype(np.float64)
        want = np.where(times[None, :] > times[pool][:, None], full, -1.0).max(axis=1)
        assert np.allclose(heads.later_cos(vecs, times, pool), want, atol=1e-6)


class _TimedVectors(_Vectors):
    def __init__(self, table, times):
        super().__init__(table)
        self.t = times

    def times(self, rows):
        return np.array([self.t[int(r)] for r in rows], np.int64)


def test_question_focus_orders_the_events_of_unsure_chains_by_the_question():
    """Pooled chain events are ordered by evidence x exp(focus x (1 - confidence) x aboutness)."""
    p = AnswerParams()
    q = _unit([1, 0, 0])
    table = {0: _unit([1, 0, 0]), 1: _unit([0, 1, 0]), 2: _unit([1, 1, 0]), 3: _unit([0.2, 1, 0])}
    g = _TimedVectors(table, {r: 86400 * r for r in table})
    rows = np.array([0, 1, 2, 3])
    value = np.array([1.0, 0.4, 0.1, 0.1])
    assert pooling.focus(g, q, rows, value, 1.0, None, (), p) is value     # a confident chain: untouched
    for confidence in (0.8, 0.2, 0.0):
        want = value * np.exp(p.question_focus * (1.0 - confidence) * np.array([table[r] @ q for r in rows]))
        assert np.allclose(pooling.focus(g, q, rows, value, confidence, None, (), p), want)
    got = pooling.focus(g, q, rows, value, 0.0, None, (), p)
    assert got[2] > got[3]                   # equally weak: the one about the question first
    day3 = [(86400 * 3, 86400 * 4 - 1)]      # a day the question names counts as being about it
    assert pooling.focus(g, q, rows, value, 0.0, None, day3, p)[3] > got[3]


class _TwoWayGraph(_OneHopGraph):
    """Head 0 reaches row 100 weakly through a reference (too little causal evidence for full
    confidence) and head 1 reaches row 101, which looks like the question, through a reply;
    every other head reaches a turn (row + 200) through a reply."""

    def vectors(self, rows):
        rows = np.asarray(rows, np.int64)
        v = np.zeros((len(rows), 32), np.float32)
        v[np.arange(len(rows)), rows % 32] = 1.0
        v[rows == 101, 0] = 3.0
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def expand(self, seeds, scores, direction, t_lo, t_hi, as_of):
        ref, reply = LINK_TYPES.index("references"), LINK_TYPES.index("reply")
        out = []
        for s in np.asarray(seeds, np.int64).tolist():
            far = {0: (100, ref, 0.1), 1: (101, reply, 0.5)}.get(s, (s + 200, reply, 0.5))
            out.append((np.array([s, far[0]], np.int64), np.array([1.0, far[2]], np.float32),
                        np.array([-1, s], np.int64), np.array([0, 1], np.int8), np.array([0, far[1]], np.int64),
                        np.array([0, 1], np.int32)))
        return out


def test_question_focus_moves_the_reached_turn_about_the_question_up_when_the_chains_are_weak():
    from dataclasses import replace
    g = _TwoWayGraph("reply")
    q = np.zeros(32, np.float32)
    q[0] = 1.0
    rows = np.arange(20, dtype=np.int64)

    def answer(params):
        eng = Engine(params=replace(params, hits_first=0.0), graph=g)
        picked, _ = eng._chain(g, q, rows, np.linspace(0.9, 0.1, 20), np.zeros(20), Filters(), 1, 1000, False)
        return [r for r, _, _ in picked]

    plain, focused = answer(replace(AnswerParams(), question_focus=0.0)), answer(AnswerParams())
    assert set(plain) == set(focused) and {100, 101} <= set(focused)
    # the reply-reached turn about the question moves up; the best head stays first
    assert focused.index(101) < plain.index(101) and focused[0] == plain[0] == 0


def test_kind_affinity_equals_a_plain_per_kind_loop():
    rng = np.random.default_rng(5)
    for n_kinds, n, prior_hits in ((1, 50, 8), (3, 40, 8), (6, 300, 0), (4, 9, 20)):
        specific = rng.normal(0.1, 0.2, n)
        kinds = rng.integers(0, n_kinds, n)
        got = heads.kind_affinity(specific, kinds, prior_hits)
        if len(set(kinds.tolist())) < 2:
            assert not got.any()
            continue
        sd, mu = specific.std(), specific.mean()
        score = {k: sum(specific[i] - mu for i in range(n) if kinds[i] == k) /
                 (sum(1 for i in range(n) if kinds[i] == k) + prior_hits) / sd for k in set(kinds.tolist())}
        best = max(score.values())
        assert np.allclose(got, [score[k] - best for k in kinds.tolist()])
        assert got.max() == 0.0 and (got <= 0).all()


class _Kinds:
    def __init__(self, kinds):
        self.k = kinds

    def kinds(self, rows):
        return np.array([self.k[int(r)] for r in rows])


def _kind_world():
    """Hits 0..39: the question is most about kind "incident" (rows 0..19 are more specific to it
    than the "discussion" rows 20..39). Candidates: a discussion look-alike (row 20) ahead of
    the asked incident (row 5) by 0.05, and an earlier and a later discussion behind it."""
    specific = np.r_[np.full(20, 0.4), np.full(20, 0.1)]
    g = _Kinds(["incident"] * 20 + ["discussion"] * 20)
    res = (np.zeros(1, np.int64),)
    cands = [(1.00, 20, res), (0.95, 5, res), (0.90, 21, res), (0.85, 22, res)]
    times = np.arange(40, dtype=np.int64) * 100
    times[21], times[22] = 100, 3000          # one before the incident (t = 500), one after
    return specific, g, cands, times


def test_the_asked_kind_decides_the_head_when_a_chain_is_causal():
    specific, g, cands, _ = _kind_world()
    eng = Engine(params=AnswerParams(), graph=g)
    out, free = eng._asked_kind(g, np.arange(40), specific, cands, 1.0)
    assert out[0][1] == 5 and free == {20: 1.00, 5: 0.95, 21: 0.90, 22: 0.85}
    # the shift is kind_weight x confidence x the kind's distance below the asked kind
    gap = -heads.kind_affinity(specific, np.array(g.k), AnswerParams().kind_prior_hits)[20]
    assert np.isclose(dict((i, s) for s, i, _ in out)[20], 1.00 - AnswerParams().kind_weight * gap)
    # no causal chain (replies, sessions): the kinds are not read; one kind: nothing changes
    assert eng._asked_kind(g, np.arange(40), specific, cands, 0.0) == (cands, None)
    one = _Kinds(["turn"] * 40)
    assert eng._asked_kind(one, np.arange(40), specific, cands, 1.0) == (cands, None)


def test_the_head_keeps_its_history_of_other_kinds():
    specific, g, cands, times = _kind_world()
    p = AnswerParams()
    eng = Engine(params=p, graph=g)
    out, free = eng._asked_kind(g, np.arange(40), specific, cands, 1.0)
    t = 0.03
    weights = [np.exp((s - out[0][0]) / t) for s, _, _ in out]
    back = dict(zip([c[1] for c in out], pooling.kind_history(weights, out, free, times, 1, t, p.kind_history)))
    kept = dict(zip([c[1] for c in out], weights))
    # the earlier discussion (row 21) may be the incident's history: it keeps kind_history of
    # its kind-free weight against the head; the later one (row 22) and the look-alike the
    # incident displaced (row 20, later too) keep the kind-weighted one
    assert np.isclose(back[21], p.kind_history * np.exp((0.90 - 0.95) / t))
    assert back[22] == kept[22] and back[20] == kept[20] and back[5] == 1.0
    fwd = dict(zip([c[1] for c in out], pooling.kind_history(weights, out, free, times, 2, t, p.kind_history)))
    assert np.isclose(fwd[22], p.kind_history * np.exp((0.85 - 0.95) / t)) and fwd[21] == kept[21]
    assert np.isclose(fwd[20], p.kind_history * 1.0)    # later than the head, scored above it: capped at 1


def _plain_inherit(rows, cands, weights, min_path):
    """The inheritance rule read literally: each candidate weighs at least the weight of every
    other candidate its chain reaches, times the path score, where that path scores min_path."""
    out = list(weights)
    where = {int(rows[i]): j for j, (_, i, _) in enumerate(cands)}
    for a, (_, _, res) in enumerate(cands):
        for r, sc in zip(res[0][1:].tolist(), res[1][1:].tolist()):
            if r in where and sc >= min_path:
                out[a] = max(out[a], weights[where[r]] * sc)
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("min_path", [0.0, 0.2, 0.5])
def test_inherit_equals_a_plain_loop_and_ignores_paths_below_the_floor(seed, min_path):
    rng = np.random.default_rng(seed)
    rows = rng.permutation(60)[:30]
    cands = []
    for i in range(12):
        reached = rng.choice(60, size=int(rng.integers(0, 15)), replace=False)
        scores = rng.choice([0.03, 0.09, 0.3, 0.9, 0.5], size=len(reached)).astype(np.float32)
        cands.append((0.0, i, (np.r_[rows[i], reached].astype(np.int64), np.r_[1.0, scores].astype(np.float32))))
    weights = rng.random(12).tolist()
    got = pooling.inherit(rows, cands, weights, min_path)
    assert np.allclose(got, _plain_inherit(rows, cands, weights, min_path))


def test_a_weak_path_passes_no_weight_when_the_chain_is_causal():
    """Head 0 (weight 1) is reached from candidate 1 by a co-mention (0.03): below the floor times
    the confidence, candidate 1 keeps its own weight; at confidence 0 it inherits."""
    rows = np.array([10, 11])
    cands = [(1.0, 0, (np.array([10]), np.array([1.0], np.float32))),
             (0.5, 1, (np.array([11, 10]), np.array([1.0, 0.03], np.float32)))]
    floor = AnswerParams().inherit_min_path
    assert pooling.inherit(rows, cands, [1.0, 0.0], floor * 1.0) == [1.0, 0.0]
    assert np.isclose(pooling.inherit(rows, cands, [1.0, 0.0], floor * 0.0)[1], 0.03)


def test_equal_evidence_is_ordered_by_the_question():
    """Events reached at one path score from one head tie on evidence: the one most like the
    question comes first, then the rest in row order; untied events are not looked at."""
    q = _unit([1, 0, 0])
    table = {0: _unit([1, 0, 0]), 1: _unit([0, 1, 0]), 2: _unit([0.3, 1, 0]), 3: _unit([1, 0.2, 0])}

    class _Counting(_Vectors):
        def __init__(self, table):
            super().__init__(table)
            self.asked = []

        def vectors(self, rows):
            self.asked += [int(r) for r in rows]
            return super().vectors(rows)

    g = _Counting(table)
    rows = np.array([0, 1, 2, 3])
    order = np.array([1.0, 0.9, 0.9, 0.9])
    tie = pooling.tie_break(g, q, rows, order, None)
    assert tie[0] == 0.0 and sorted(g.asked) == [1, 2, 3]
    assert np.lexsort((rows, -tie, -order)).tolist() == [0, 3, 2, 1]
    g.asked = []
    assert not pooling.tie_break(g, q, rows, np.array([1.0, 0.9, 0.8, 0.7]), None).any() and g.asked == []


def _team_world(tmp_path, story_acl=None):
    """A linked chain (A -> H, both by ann) with the query about H; S is an unlinked step by ann
    like the chain; N a near-copy of A by ann (an older version); L like the chain but after H;
    O like the chain by bob; U by ann but unlike the chain; twelve unrelated hits by carol."""
    from conftest import event, write_corpus
    from fastctx.index import Index, build

    dim, day = 24, 86400
    topic, story, detail = np.eye(dim)[0], np.eye(dim)[1], np.eye(dim)[2]
    axis = lambda i: np.eye(dim)[i]   # noqa: E731
    t0 = 1_700_000_000
    spec = [  # (time in days, person, vector, links)
        (10, "ann", topic + story + 1.5 * detail, [("e000001", "references")]),    # 0 H, the head
        (5, "ann", topic + story + 1.5 * axis(3), []),                        # 1 A
        (2, "ann", topic + story + 1.5 * axis(4), []),                        # 2 S
        (1, "ann", topic + story + 1.5 * axis(3) + 0.2 * axis(5), []),       # 3 N, a near-copy of A
        (12, "ann", topic + story + 1.5 * axis(6), []),                       # 4 L, after H
        (3, "bob", topic + story + 1.5 * axis(7), []),                        # 5 O
        (4, "ann", topic - story + axis(8), []),                              # 6 U
    ] + [(3 + 0.1 * i, "carol", topic + axis(10 + i), []) for i in range(12)]
    recs = []
    for i, (d, who, _, links) in enumerate(spec):
        extra = {"acl": story_acl} if story_acl is not None and i == 2 else {}
        recs.append(event(i, time=t0 + int(d * day), tokens=10, entities=[f"person:{who}"], links=links, **extra))
    vecs = np.array([_unit(v) for _, _, v, _ in spec], np.float32)
    build(write_corpus(tmp_path / "c", recs, vecs), tmp_path / "i")
    return Index(tmp_path / "i"), _unit(topic + 0.3 * story + detail).astype(np.float32)


def test_the_chain_s_people_add_their_events_most_like_the_chain(tmp_path):
    from dataclasses import replace

    idx, q = _team_world(tmp_path)

    def answer(direction="back", filters=Filters(), **kw):
        a = Engine(idx, params=replace(AnswerParams(), **kw)).run(q, "chain", filters, direction, 1000)
        return {e.id: e.why for e in a.events}
    got = answer()
    assert {"e000000", "e000001"} <= set(got)                           # the linked chain
    assert got.get("e000002") == "same people, like the chain"          # S, ann's unlinked step
    for other in ("e000003", "e000004", "e000005", "e000006"):         # N, L, O, U
        assert other not in got
    assert "e000002" not in answer(team_k=0)
    assert "e000003" in answer(older_version_cos=0.999)                # N is excluded as a near-copy
    assert "e000004" in answer("both")                                  # L is on the other side
    assert "e000002" not in answer(team_prefixes=("user:",))           # no person of the chain
    # the query's own filters bound the search: an any-of filter stays,
    # a time window excludes S (day 2)
    assert answer(filters=Filters(entities_any=("person:ann", "person:carol"))).get("e000002")
    assert "e000002" not in answer(filters=Filters(time_from=1_700_000_000 + 3 * 86400))


def test_the_chain_s_people_never_bring_an_event_outside_the_view(tmp_path):
    idx, q = _team_world(tmp_path, story_acl=["group:x"])
    seen = {e.id for e in idx.query(q, type="chain", budget_tokens=1000, principals=["group:x"]).events}
    hidden = {e.id for e in idx.query(q, type="chain", budget_tokens=1000, principals=["group:y"]).events}
    assert "e000002" in seen and "e000002" not in hidden and "e000001" in hidden


def _topic_world(tmp_path, params=AnswerParams()):
    """300 events of equal length: 100 share the words "ledger retry", one also names
    settle_ledger_fast, the rest talk about other things."""
    import fastctx
    rng = np.random.default_rng(4)
    recs = []
    for i in range(300):
        words = "ledger retry" if i < 100 else f"other{i % 7} thing{i % 5}"
        recs.append({"id": f"e{i}", "time": 1_700_000_000 + 60 * i, "source": "git", "kind": "commit",
                     "tokens": 20, "text": f"{words} step{i}"})
    recs[7]["text"] = "ledger retry settle_ledger_fast"
    vecs = rng.normal(size=(300, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    idx = fastctx.Index.create(tmp_path / "idx", 16, answer_params=params)
    idx.add(recs, vecs)
    idx.flush()
    return idx, rng.normal(size=16).astype(np.float32)


@pytest.mark.parametrize("cap", [0, 8, 32, 150])
def test_lexical_match_many_rows_share_weighs_cap_over_their_count(tmp_path, cap):
    """A row's lexical match is its BM25 score over the best one's, times cap / n when n > cap
    rows score at least half the best: a plain reading of the lexical hits."""
    from fastctx.derive import query_words
    idx, q = _topic_world(tmp_path, AnswerParams(lexical_max_matches=cap))
    eng = idx.engine()
    for text in ("what about the ledger retry?", "who wrote settle_ledger_fast?"):
        rows, _, lex = eng._seeds(eng.g, q, 64, Filters(), text)
        lrows, lscores = eng.g.lexical(query_words(text), eng.params.lexical_k, Filters())
        rel = np.asarray(lscores) / max(lscores)
        n = int((rel >= 0.5).sum())
        want = dict(zip(np.asarray(lrows).tolist(), (rel * (cap / n if 0 < cap < n else 1.0)).tolist()))
        got = dict(zip(rows.tolist(), lex.tolist()))
        assert all(got[r] == pytest.approx(w) for r, w in want.items())
        assert all(got[r] == 0.0 for r in got if r not in want)
        if "settle" in text:       # one row singles itself out: full weight whatever the cap
            assert max(got.values()) == 1.0 and n < 8
        else:                      # about 100 rows match the topic's words equally
            assert n >= 100 and max(got.values()) == pytest.approx(cap / n if 0 < cap < n else 1.0)


class _Actors:
    """Each row's actors (`table`) and the share of all events that mention each (`share`)."""

    def __init__(self, table, share=None):
        self.table, self.share = table, share or {}

    def actors(self, rows):
        lists = [self.table.get(int(r), []) for r in rows]
        ptr = np.zeros(len(lists) + 1, np.int64)
        ptr[1:] = np.cumsum([len(x) for x in lists])
        ids = np.array([a for x in lists for a in x], np.int64)
        return ptr, ids, np.array([self.share.get(int(a), 0.0) for a in ids])


def _plain_actor_coherence(table, share, expansions):
    out = []
    for res in expansions:
        own = set(table.get(int(res[0][0]), []))
        mass = 0.0
        for r, s in zip(res[0][1:], res[1][1:]):
            shared = own & set(table.get(int(r), []))
            if shared:
                mass += float(s) * max(1.0 - share.get(a, 0.0) for a in shared)
        out.append(min(mass, 1.0))
    return out


def test_actor_coherence_matches_a_plain_reading():
    rng = np.random.default_rng(5)
    for trial in range(50):
        table = {r: sorted(set(rng.integers(0, 6, rng.integers(0, 3)).tolist())) for r in range(40)}
        share = {a: float(rng.uniform(0, 0.8)) for a in range(6)}
        expansions = []
        for _ in range(int(rng.integers(1, 6))):
            rows = rng.permutation(40)[:int(rng.integers(1, 12))]
            expansions.append((rows, np.r_[1.0, rng.uniform(0.02, 0.9, len(rows) - 1)].astype(np.float32)))
        got = heads.actor_coherence(_Actors(table, share), expansions)
        assert np.allclose(got, _plain_actor_coherence(table, share, expansions)), trial


def test_a_chain_its_own_people_worked_outscores_a_look_alike_of_someone_else():
    """Two candidates alike in every other way: the one whose chain was worked by its own person
    (reached events sharing the actor) gains `actor_coherence` x their evidence, up to one
    unit; no actors, or none shared, gains nothing; an actor on most events (a history's main
    author, a bot) counts for what it rarely appears."""
    table = {0: [7], 1: [7], 2: [7], 10: [8], 11: [9], 12: [3], 30: [5], 31: [5]}
    own = (np.array([0, 1, 2]), np.array([1.0, 0.6, 0.7], np.float32))     # 1.3: capped at 1
    other = (np.array([10, 11, 12]), np.array([1.0, 0.6, 0.7], np.float32))
    alone = (np.array([20]), np.array([1.0], np.float32))
    hub = (np.array([30, 31]), np.array([1.0, 0.5], np.float32))           # actor 5 on 60% of events
    got = heads.actor_coherence(_Actors(table, {5: 0.6}), [own, other, alone, hub])
    assert np.allclose(got, [1.0, 0.0, 0.0, 0.5 * 0.4])
    assert heads.actor_coherence(_Actors({}), [own, other]).tolist() == [0.0, 0.0]
    assert AnswerParams().actor_coherence > 0


def test_an_index_built_before_actors_were_flagged_has_them_flagged_from_their_names(tmp_path):
    """A build records which entities are actors (`actor_prefixes` in the manifest's params, the
    actor bit of each entity's flags). An index built before has them flagged from their names on
    open, as a build would: the same flags and the same answers; events added later too."""
    import json
    from conftest import event, make_corpus
    from fastctx.derive import FLAG_ACTOR
    from fastctx.format import write_manifest
    from fastctx.index import Index, build
    c = make_corpus(tmp_path / "c", 400, seed=2, dim=8, n_people=9)
    fresh, _ = build(c.dir, tmp_path / "fresh")
    build(c.dir, tmp_path / "legacy")
    shard_dir = tmp_path / "legacy" / "shard-000"
    man = json.loads((shard_dir / "MANIFEST.json").read_text())
    assert man["params"].pop("actor_prefixes") == ["person:", "user:", "author:", "speaker:"]
    flags = np.load(shard_dir / man["segments"][0]["name"] / "ent_flags.npy")
    np.save(shard_dir / man["segments"][0]["name"] / "ent_flags.npy", flags & ~np.uint8(FLAG_ACTOR))
    man["segments"][0]["files"]["ent_flags.npy"]["crc32"] = __import__("zlib").crc32(
        (shard_dir / man["segments"][0]["name"] / "ent_flags.npy").read_bytes())
    write_manifest(shard_dir, man)
    legacy = Index(tmp_path / "legacy")
    want = np.asarray(fresh.shards[0].entity_flags)
    assert np.count_nonzero(want & FLAG_ACTOR) == 9 and np.array_equal(legacy.shards[0].entity_flags, want)
    for q in c.vectors[:12:3]:
        assert [e.id for e in legacy.query(q).events] == [e.id for e in fresh.query(q).events]
    new = [event(1000 + i, time=int(c.records[-1]["time"]) + 60 * i, entities=["service:s1", f"person:new{i}"])
           for i in range(3)]
    for idx in (fresh, legacy):
        idx.add(new, c.vectors[:3])
    assert np.array_equal(legacy.shards[0].entity_flags, fresh.shards[0].entity_flags)
    assert np.count_nonzero(legacy.shards[0].entity_flags & FLAG_ACTOR) == 12


def test_a_chain_that_reaches_the_head_keeps_its_weight_whoever_worked_it():
    """The people term tells stories apart, not the steps of one: a runner-up whose chain reaches
    the head keeps at least the pooling weight its score without the term gives it (at most 1);
    one that does not reach the head keeps the weight the term gave it."""
    rows = np.array([10, 11, 12])
    head = (np.array([10, 5]), np.ones(2, np.float32))
    later = (np.array([11, 7, 10]), np.ones(3, np.float32))      # reaches the head: one story
    other = (np.array([12, 8]), np.ones(2, np.float32))
    cands = [(1.0, 0, head), (0.8, 1, later), (0.8, 2, other)]
    people = {0: 0.2, 1: 0.0, 2: 0.0}
    t = 0.1
    weights = pooling.softmax_weights(cands, t)
    got = pooling.same_story(weights, cands, rows, people, t)
    assert np.isclose(got[1], np.exp((0.8 - 0.8) / t)) and got[1] == 1.0     # as without the term
    assert got[2] == weights[2] and got[0] == 1.0
    assert pooling.same_story(weights, cands, rows, {0: 0.0, 1: 0.0, 2: 0.0}, t) == weights


def _plain_same_people(table, value, floor):
    best = max(value)
    named = {}
    for r in range(len(value)):
        for a in table.get(r, []):
            named[a] = named.get(a, 0) + 1
    return [v >= floor * best or any(named[a] > 1 for a in table.get(r, [])) for r, v in enumerate(value)]


def test_same_people_matches_a_plain_reading():
    rng = np.random.default_rng(11)
    for trial in range(100):
        n = int(rng.integers(1, 30))
        table = {r: sorted(set(rng.integers(0, 12, rng.integers(0, 3)).tolist())) for r in range(n)}
        value = rng.uniform(0.0, 1.0, n) ** 3
        floor = float(rng.choice([0.0, 0.05, 0.1, 0.5, 1.0]))
        got = pooling.same_people(_Actors(table), np.arange(n), value, floor)
        assert got.tolist() == _plain_same_people(table, value.tolist(), floor), trial


def test_weak_evidence_stays_only_by_people_named_elsewhere_in_it():
    """Rows 0-1 are strong; 2 is weak by ann, whom 0 names; 3 weak by bob, who is named by
    nobody else; 4 weak by carol and 5 weaker by carol (each other's peer); 6 weak, naming
    nobody. Below `people_floor` of the best, only 2, 4 and 5 stay."""
    table = {0: [1], 1: [2], 2: [1], 3: [3], 4: [4], 5: [4]}
    value = np.array([1.0, 0.5, 0.05, 0.05, 0.04, 0.02, 0.03])
    assert pooling.same_people(_Actors(table), np.arange(7), value, 0.1).tolist() == [
        True, True, True, False, True, True, False]
    assert pooling.same_people(_Actors(table), np.arange(7), value, 0.0).all()     # off
    assert pooling.same_people(_Actors({}), np.arange(7), value, 0.1).all()       # no actors known
    assert 0 < AnswerParams().people_floor <= 1
    with pytest.raises(Exception, match="people_floor"):
        AnswerParams(people_floor=1.5)


def _thin_story(tmp_path, strong_links: bool):
    """Filler commits, and a story whose head (`bug`) names a config only the design note
    (`design`, earlier) names; the design note shares its ticket with a later patch (`patch`,
    still before the head) and with an event after the head (`later`). With `strong_links` the
    head also fixes two other commits: more than one unit of evidence behind it."""
    import random
    from fastctx.index import build
    rng = random.Random(3)
    words = ["queue", "retry", "cache", "parser", "index", "socket", "timer", "pool", "codec", "shard"]
    t0, day = 1_704_067_200, 86_400
    events = [{"id": f"f{i:03d}", "time": t0 + i * 3 * day, "source": "git", "kind": "commit",
               "text": f"{rng.choice(words)} {rng.choice(words)} tweak {i}", "entities": [f"person:dev{i % 5}"]}
              for i in range(100)]
    story = [("design", 100, "design note for ledger reconciliation rounding", ["config:ledger.rounding", "ticket:LED-7"]),
             ("patch", 150, "patch ledger totals computed per account", ["ticket:LED-7"]),
             ("bug", 200, "ledger reconciliation drops cents when rounding", ["config:ledger.rounding"]),
             ("later", 230, "monthly report follow-up", ["ticket:LED-7"])]
    for eid, d, text, ents in story:   # the patch by someone else: not one of the chain's people
        events.append({"id": eid, "time": t0 + d * day, "source": "git", "kind": "commit", "text": text,
                       "entities": ents + ["person:bob" if eid == "patch" else "person:ann"]})
    if strong_links:
        events[-2]["links"] = [{"to": "f050", "type": "fixes"}, {"to": "f051", "type": "fixes"}]
    idx, _ = build(events, tmp_path / f"thin{strong_links}")
    return idx.path


@pytest.mark.parametrize("strong_links", [False, True])
def test_a_thin_chain_is_walked_both_ways_but_never_past_its_head(tmp_path, strong_links):
    from fastctx.graph import LocalGraph
    from fastctx.index import Index
    path = _thin_story(tmp_path, strong_links)
    q = "ledger reconciliation drops cents when rounding"
    got = {e.id: e.why for e in Index(path).query(q, budget_tokens=400).events}
    off = {e.id for e in Index(path, answer_params=AnswerParams(widen_below=0)).query(q, budget_tokens=400).events}
    assert {"bug", "design"} <= set(got) and {"bug", "design"} <= off
    assert "patch" not in off                        # later than the design note: a back walk stops there
    if strong_links:                                 # more than one unit: not widened
        assert "patch" not in got
    else:
        assert got["patch"] == "shares ticket:LED-7 with design"
    # the widened walk itself: through the design note to the patch, never to what follows the head
    idx = Index(path)
    g, back = LocalGraph(idx), heads.DIRECTIONS["back"]
    bug = idx.get(["bug"])[0].row
    lo, hi = -(2 ** 62), 2 ** 62
    walked = g.expand(np.array([bug]), np.ones(1, np.float32), back, lo, hi, None)
    widened = heads.widen_thin(g, np.array([bug]), walked, back, lo, hi, None, AnswerParams().widen_below)
    reached = set(g.ids(widened[0][0].tolist()))
    assert "design" in reached and "later" not in reached
    assert ("patch" in reached) == (not strong_links)
    assert widened[0][0][0] == bug and (strong_links or len(widened[0][0]) > len(walked[0][0]))
