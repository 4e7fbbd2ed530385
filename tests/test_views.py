"""Access lists and scopes: nothing outside the asker's view is returned, named, walked through,
current or counted, embedded and sharded alike (property-based leak hunt), and lexical seeds."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastctx
from fastctx.derive import event_derived, query_words, terms, words
from fastctx.errors import AccessDeniedError, CorpusError, InvalidQueryError
from fastctx.shards import open_local

GENERATOR = Path(__file__).resolve().parents[2] / "shared" / "orgmem" / "generate.py"
GROUPS = ["group:g0", "group:g1", "group:g2", "user:ana", "user:bo"]
pytestmark = pytest.mark.skipif(not GENERATOR.exists(), reason="needs the orgmem generator beside the repository")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    corpus = root / "corpus"
    subprocess.run([sys.executable, str(GENERATOR), str(corpus), "--events", "3000", "--dim", "64", "--text",
                    "--seed", "4", "--queries", "40"], check=True, capture_output=True)
    rng = np.random.default_rng(7)
    lines = (corpus / "events.jsonl").read_text().splitlines()
    acl = {}
    with open(corpus / "events.jsonl", "w") as f:
        for ln in lines:
            e = json.loads(ln)
            if rng.random() < 0.4:
                e["acl"] = sorted(set(rng.choice(GROUPS, size=int(rng.integers(1, 3))).tolist()))
            acl[e["id"]] = e.get("acl")
            f.write(json.dumps(e) + "\n")
    services = sorted({e for ln in lines for e in json.loads(ln)["entities"] if e.startswith("service:")})
    one, _ = fastctx.build(corpus, root / "one")
    fastctx.build(corpus, root / "four", shards=4)
    queries = [json.loads(x) for x in (corpus / "queries.jsonl").read_text().splitlines()]
    qvecs = np.load(corpus / "query_vectors.npy")
    ents = {json.loads(ln)["id"]: set(json.loads(ln)["entities"]) for ln in lines}
    times = {json.loads(ln)["id"]: json.loads(ln)["time"] for ln in lines}
    return dict(corpus=corpus, one=one, four=open_local(root / "four"), four_dir=root / "four", acl=acl, queries=queries, qvecs=qvecs,
                services=services, ents=ents, times=times, four_replica=open_local(root / "four", replica=True))


def _visible(world, eid, principals):
    a = world["acl"][eid]
    return not a or bool(set(a) & set(principals))


def _check(world, ans, principals, scope_entity):
    ids = {e.id for e in ans.events}
    if ans.current is not None:
        ids.add(ans.current.id)
    for e in ans.events:
        ids |= set(re.findall(r"\b(e\d{6,})\b", e.why or ""))
        ids |= {to for to, _ in e.links}          # an event's links name events too
        if e.superseded_by:
            ids.add(e.superseded_by)
    for eid in ids:
        assert _visible(world, eid, principals), f"{eid} (acl {world['acl'][eid]}) shown to {principals}"
        if scope_entity:
            assert scope_entity in world["ents"][eid], f"{eid} outside scope {scope_entity}"


def _same(a, b):
    assert [e.id for e in a.events] == [e.id for e in b.events]
    assert [e.links for e in a.events] == [e.links for e in b.events]
    assert (a.current.id if a.current else None) == (b.current.id if b.current else None)
    assert [e.why for e in a.events] == [e.why for e in b.events]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(qi=st.integers(0, 39), who=st.lists(st.sampled_from(GROUPS), min_size=1, max_size=2, unique=True),
       scoped=st.booleans(), si=st.integers(0, 100), text=st.booleans())
def test_no_leak_embedded_and_sharded_identical(world, qi, who, scoped, si, text):
    q = dict(world["queries"][qi])
    v = world["qvecs"][qi]
    if not text:
        q["text"] = None
    scope_entity = world["services"][si % len(world["services"])] if scoped else None
    q["principals"] = who
    if scope_entity:
        q["scope"] = {"entities_any": [scope_entity]}
    a = world["one"].query_spec(q, v)
    _check(world, a, who, scope_entity)
    b = world["four"].query_spec(q, v)
    _check(world, b, who, scope_entity)
    _same(a, b)
    c = world["four_replica"].query_spec(q, v)     # the expansion on the coordinator's graph replica
    _check(world, c, who, scope_entity)
    _same(a, c)
    # chains with seeds expand on the replica (a scope and access list may leave none)
    assert c.timings["on_replica"] == (q["type"] == "chain" and bool(c.events))


def test_searches_per_entity_see_what_the_asker_sees(world):
    """The people searches of a chain answer (`search_per_entity`) equal plain searches under
    the same view, the filters narrowed to each person: nothing hidden comes back."""
    from fastctx.filters import Filters
    idx, v = world["one"], world["qvecs"][0]
    people = sorted({e for es in world["ents"].values() if world["services"][0] in es
                     for e in es if e.startswith("person:")})[:6] + ["person:nobody"]
    found = 0
    for who in (["group:g0"], ["user:ana", "group:g2"]):
        view = idx.view({"entities_any": world["services"][:2]}, who)
        base = Filters(entities_any=(world["services"][0],))
        got = idx.search_per_entity(v, 20, people, filters=base, view=view)
        for name, hits in zip(people, got):
            want = idx.search(v, 20, filters=Filters(entities_any=base.entities_any, entities_all=(name,)), view=view)
            assert hits.ids(0) == want.ids(0) and np.array_equal(hits.scores, want.scores, equal_nan=True)
            for e in hits.events(0):
                assert _visible(world, e.id, who) and name in e.entities
            found += int(hits.counts[0])
    assert found > 5


def test_payloads_sent_with_hits_are_only_what_the_asker_sees(world):
    from fastctx.shards.service import ShardService
    from fastctx.view import View
    who = ["group:g1"]
    for shard in range(4):
        svc = ShardService(world["four_dir"], shard)
        for v in world["qvecs"][:10]:
            out = svc.Search({"vectors": v[None, :].astype(np.float32), "k": 300, "hit_payloads": 256,
                              "view": View.make(principals=who).to_msg()})
            ids = [pl["id"] for pl in out["hit_payload"]]
            assert len(ids) == min(256, int(out["counts"][0])) and all(_visible(world, i, who) for i in ids)


def test_index_with_acl_refuses_anonymous_questions(world):
    q, v = world["queries"][0], world["qvecs"][0]
    with pytest.raises(AccessDeniedError):
        world["one"].query_spec(q, v)
    with pytest.raises(AccessDeniedError):
        world["four"].query_spec(q, v)
    with pytest.raises(AccessDeniedError):
        world["one"].search(v, k=5)
    assert world["one"].query_spec(q, v, unrestricted=True).events
    assert world["one"].search(v, k=5, unrestricted=True).counts[0] == 5


def test_links_never_name_what_the_asker_may_not_see(world):
    """Payload links (given and derived) of an answer's events, of search hits and of `get` name
    only events the asker may see; an unrestricted read keeps them all."""
    who = ["group:g0"]
    named = hidden = 0
    for qi in range(10):
        q = {**world["queries"][qi], "principals": who}
        for idx in (world["one"], world["four"]):
            for e in idx.query_spec(q, world["qvecs"][qi]).events:
                named += len(e.links)
                hidden += sum(not _visible(world, to, who) for to, _ in e.links)
    assert named and not hidden
    ids = sorted(world["acl"])[:400]
    got = world["one"].get(ids, principals=who)
    assert all(_visible(world, to, who) for e in got if e for to, _ in e.links)
    hits = world["one"].search(world["qvecs"][0], k=50, principals=who)
    assert all(_visible(world, to, who) for e in hits.events() for to, _ in e.links)
    every = world["one"].get(ids, unrestricted=True)
    assert any(not _visible(world, to, who) for e in every if e for to, _ in e.links)


def test_hidden_version_does_not_exist_for_the_asker(world):
    """A current question answered for someone who cannot see the latest version gets the
    latest version they can see, never the hidden one, and no mark naming it."""
    for q, v in zip(world["queries"], world["qvecs"]):
        if q["type"] != "current":
            continue
        full = world["one"].query_spec(q, v, unrestricted=True)
        if full.current is None or not world["acl"][full.current.id]:
            continue
        outsider = [g for g in GROUPS if g not in world["acl"][full.current.id]][:1]
        ans = world["one"].query_spec({**q, "principals": outsider}, v)
        assert ans.current is None or ans.current.id != full.current.id
        _check(world, ans, outsider, None)
        return
    pytest.skip("no current fact with an access list in this corpus")


def test_scope_bounds_expansion_not_only_seeds(world):
    """Without scope a chain answer may wander to other services; with it, never."""
    svc = world["services"][0]
    for q, v in zip(world["queries"], world["qvecs"]):
        ans = world["one"].query_spec({**q, "scope": {"entities_any": [svc]}}, v, unrestricted=True)
        for e in ans.events:
            assert svc in world["ents"][e.id]


def test_bad_principals_and_scope_are_refused(world):
    v = world["qvecs"][0]
    with pytest.raises(InvalidQueryError):
        world["one"].query(v, principals="user:ana")
    with pytest.raises(InvalidQueryError):
        world["one"].query(v, principals=["user:ana"], scope={"tenant": ["x"]})


@pytest.mark.parametrize("scope, says", [({"entities_any": []}, "empty list"), ({"kinds": ()}, "empty list"),
                                         ({"entities_any": ["service:x"], "sources": []}, "empty list")])
def test_a_scope_with_an_empty_list_is_refused_not_ignored(world, scope, says):
    """"Any of none" read as "no scope" would return every event: it is refused, in `query`,
    `search` and a queries.jsonl spec alike. A scope naming no key ({}) is no scope, as null is."""
    q, v = world["queries"][0], world["qvecs"][0]
    with pytest.raises(InvalidQueryError, match=says):
        world["one"].query(v, scope=scope, unrestricted=True)
    with pytest.raises(InvalidQueryError, match=says):
        world["one"].search(v, k=3, scope=scope, unrestricted=True)
    with pytest.raises(InvalidQueryError, match=says):
        world["one"].query_spec({**q, "scope": scope}, v, unrestricted=True)
    for none in (None, {}):
        assert world["one"].query_spec({**q, "scope": none}, v, unrestricted=True).events   # no bound


def test_query_specs_of_the_wrong_shape_are_query_errors(world):
    v = world["qvecs"][0]
    for spec in (None, [1], "chain"):
        with pytest.raises(InvalidQueryError, match="mapping"):
            world["one"].query_spec(spec, v)
    with pytest.raises(InvalidQueryError, match="filters must be a mapping"):
        world["one"].query_spec({**world["queries"][0], "filters": "x"}, v, unrestricted=True)


def test_acl_and_reserved_entities_validated(tmp_path):
    from fastctx.corpus import EventBatch
    base = {"id": "a", "time": 1_700_000_000, "source": "s", "kind": "k", "tokens": 5}
    with pytest.raises(CorpusError, match="acl"):
        EventBatch.from_records([{**base, "acl": "user:ana"}], np.ones((1, 4), np.float32))
    with pytest.raises(CorpusError, match="reserved"):
        EventBatch.from_records([{**base, "entities": ["~w:x"]}], np.ones((1, 4), np.float32))


# ------------------------------------------------------------------------------------ derived
def test_identifier_terms_and_words():
    text = ("Fix retry_ledger_v2 in payments/api/retry.py (PAY-1432); raise IdempotencyError when "
            "config.retry.max is hit; call computeHash() before `vault_client`; bump to 2.3.1")
    t = set(terms(text))
    for want in ("retry_ledger_v2", "payments/api/retry.py", "PAY-1432", "IdempotencyError", "config.retry.max",
                 "computeHash", "vault_client", "2.3.1"):
        assert want in t, want
    w = words("The double charges were retried by the agencies")
    assert {"double", "charge", "retry", "agency"} <= set(w) and "the" not in w
    d = event_derived("see computeHash", ["customer:acme"], ["group:x"])
    assert "~t:computeHash" in d and "~w:acme" in d and "~acl:group:x" in d and "~acl:*" in d
    assert query_words("computeHash charges") == ["~w:computehash", "~w:charge", "~t:computeHash"]


def test_people_credited_in_trailers_are_terms_but_not_the_authors_sign_off():
    text = ("lib: fix the retry\n\nReported-by: Harry Sintonen\nReviewed-By: Ben Noordhuis <ben@nl.org>\n"
            "Co-authored-by: Jane Q. Doe <jd@x.org>\nSigned-off-by: Me Myself <me@x.org>\nFixes #1234")
    t = terms(text)
    assert {"Harry Sintonen", "Ben Noordhuis", "Jane Q. Doe"} <= set(t)
    assert not any("Myself" in x for x in t)
    assert terms("reported by Harry Sintonen in the review") == []   # not a trailer line


def test_lexical_seeds_find_a_rare_identifier(tmp_path):
    """A question naming a rare identifier finds the one event that mentions it, although its
    vector is no closer than the look-alikes'."""
    rng = np.random.default_rng(0)
    recs = [{"id": f"e{i}", "time": 1_700_000_000 + 60 * i, "source": "git", "kind": "commit", "tokens": 20,
             "text": f"tune the retry loop of the payment service step {i}"} for i in range(300)]
    recs[123]["text"] = "tune the retry loop of the payment service in settle_ledger_fast"
    vecs = rng.normal(size=(300, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    idx = fastctx.Index.create(tmp_path / "idx", 32)
    idx.add(recs, vecs)
    idx.flush()
    q = rng.normal(size=32).astype(np.float32)
    ans = idx.query(q, text="where is settle_ledger_fast tuned?", type="chain", budget_tokens=100)
    assert "e123" in [e.id for e in ans.events]
    plain = idx.query(q, type="chain", budget_tokens=100)
    assert "e123" not in [e.id for e in plain.events]


def test_similarity_links_match_a_brute_force_reference():
    from fastctx.derive import similarity_links
    rng = np.random.default_rng(3)
    n, dim, window = 400, 8, 50
    times = np.sort(rng.integers(0, 1000, n)).astype(np.int64)
    rng.shuffle(times)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    src, dst = similarity_links(times, vecs, 2, window, 1.0, 10_000, block=37)
    got = set(zip(src.tolist(), dst.tolist()))
    want = set()
    for i in range(n):
        cand = [j for j in range(n) if (times[j], j) < (times[i], i) and times[j] >= times[i] - window]
        if len(cand) < 8:
            continue
        s = vecs[cand] @ vecs[i]
        floor = s.mean() + 1.0 * s.std()
        best = sorted(zip(-s, cand))[:2]
        want |= {(i, j) for ns, j in best if -ns >= floor - 1e-6}
    assert got == want
    assert all((times[d], d) < (times[s], s) for s, d in got)
    assert any(times[d] == times[s] for s, d in got)     # one time: earlier in input order


def test_derived_links_are_not_input():
    from fastctx.corpus import EventBatch
    base = {"id": "a", "time": 1_700_000_000, "source": "s", "kind": "k", "tokens": 5}
    with pytest.raises(CorpusError, match="links.type"):
        EventBatch.from_records([{**base, "links": [{"to": "b", "type": "similar"}]}], np.ones((1, 4), np.float32))


def test_actor_links_reach_back_within_the_window():
    from fastctx.corpus import EventBatch
    from fastctx.derive import actor_links
    day = 86400
    recs = [{"id": f"a{i}", "time": 1_700_000_000 + t * day, "source": "git", "kind": "commit", "tokens": 5,
             "entities": ents} for i, (t, ents) in enumerate([
                 (0, ["person:ana"]), (1, ["person:ana", "person:bo"]), (2, ["person:bo"]), (30, ["person:ana"]),
                 (31, ["person:ana"])])]
    b = EventBatch.from_records(recs, np.ones((5, 4), np.float32))
    src, dst = actor_links(b, 1, 14 * day, ("person:",))
    assert sorted(zip(src.tolist(), dst.tolist())) == [(1, 0), (2, 1), (4, 3)]
    src, dst = actor_links(b, 2, 14 * day, ("person:",))
    assert sorted(zip(src.tolist(), dst.tolist())) == [(1, 0), (2, 1), (4, 3)]


def test_derived_links_do_not_change_content_hashes(tmp_path):
    """Built with derived links, the same records added again are recognised as present."""
    from fastctx.params import BuildParams
    from fastctx.encoder import HashingEncoder
    corpus = tmp_path / "c"
    corpus.mkdir()
    enc = HashingEncoder(dim=32)
    recs = [{"id": f"x{i}", "time": 1_700_000_000 + 3600 * i, "source": "git", "kind": "commit", "tokens": 5,
             "entities": [f"person:p{i % 3}"], "text": f"retry ledger change {i % 7}"} for i in range(60)]
    (corpus / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    np.save(corpus / "vectors.npy", enc.encode([r["text"] for r in recs]).astype(np.float32))
    (corpus / "meta.json").write_text(json.dumps({"format": "orgmem-v1", "name": "c", "dim": 32, "n_events": 60}))
    idx, rep = fastctx.build(corpus, tmp_path / "i", params=BuildParams(actor_k=2, actor_window_days=14, actor_min_excess=0,
                                                                   similar_k=2, similar_z=0.5))
    assert any(l[1] == "same_actor" for e in idx.search(enc.encode(["retry"])[0], k=60, unrestricted=True).events(0)
               for l in e.links)
    w = fastctx.Index(tmp_path / "i", writable=True)
    report = w.upsert(recs, enc.encode([r["text"] for r in recs]).astype(np.float32))
    assert report.skipped == 60 and report.updated == 0
    w.close()


def test_four_grpc_shards_answer_as_embedded_with_text_scope_and_principals(world):
    """Real shard servers and a coordinator server on loopback: the same answers as one
    embedded shard for questions with text (lexical seeds), a scope and principals."""
    from fastctx.shards.coordinator import Coordinator
    from fastctx.shards.server import CoordinatorServer, ShardServer, connect
    from fastctx.shards.transport import remote_cluster
    shards = {k: [ShardServer(world["four_dir"], k, port=0).start()] for k in range(4)}
    cluster = remote_cluster({k: [s.address for s in v] for k, v in shards.items()})
    coord = Coordinator(cluster)
    server = CoordinatorServer(coord, port=0).start()
    client = connect(server.address)
    try:
        for qi in range(0, 40, 5):
            q = {**world["queries"][qi], "principals": GROUPS[qi % 3:qi % 3 + 2],
                 "scope": {"entities_any": world["services"][:8]}}
            a = world["one"].query_spec(q, world["qvecs"][qi])
            b = client.query_spec(q, world["qvecs"][qi])
            _check(world, b, q["principals"], None)
            _same(a, b)
    finally:
        client.close()
        server.stop(0)
        coord.close()
        for v in shards.values():
            for s in v:
                s.stop(0)
