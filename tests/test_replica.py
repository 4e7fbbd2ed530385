"""A coordinator's graph replica (shards/replica.py): the whole index's graph assembled from the
shard directories equals a one-shard build's array for array; a coordinator holding it answers
like the embedded index without a single Expand round; a replica the shards have moved past (a
cluster write was synced) or a query lacking a shard expands through the shards instead."""
from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from conftest import make_corpus, query_vectors_near
from test_sharded import _cases, _same

from fastctx.errors import InvalidQueryError
from fastctx.graph import LocalGraph
from fastctx.index import build
from fastctx.shards import open_local
from fastctx.shards.replica import GraphReplica
from fastctx.shards.writes import ClusterWriter
from fastctx.view import View

GRAPH_ARRAYS = ("times", "out_ptr", "out_dst", "out_type", "in_ptr", "in_src", "in_type", "ev_ptr", "ev_ent",
                "ent_ptr", "ent_rows")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("replica")
    c = make_corpus(root / "corpus", 1500, seed=3, dim=16, n_buckets=120, n_people=12)
    one, _ = build(c.dir, root / "one")
    build(c.dir, root / "four", shards=4)
    return {"root": root, "corpus": c, "one": one, "four_dir": root / "four",
            "queries": query_vectors_near(c.centers, 8, seed=4)}


def test_replica_arrays_equal_a_one_shard_build(world):
    rep = GraphReplica(world["four_dir"])
    local = LocalGraph(world["one"])
    for name in GRAPH_ARRAYS:
        want, got = np.asarray(getattr(local.graph, name)), getattr(rep, name)
        assert got.dtype == want.dtype and np.array_equal(got, want), name
    assert np.array_equal(rep.ent_weight, local.ent_weight)
    assert np.array_equal(rep.live, local.allowed)
    assert sorted(np.unique(rep.owner).tolist()) == [0, 1, 2, 3]
    # what a question reads per row after its seeds: the one-shard build's values
    rows = np.arange(rep.n)
    assert np.array_equal(rep.tokens(rows), local.tokens(rows))
    by, at = rep.supersession(rows)
    assert (by >= 0).any() and np.array_equal(by, local.superseded_by) and np.array_equal(at, local.superseded_at)
    assert rep.superseded(rows, View()) == local.superseded(rows)
    names = np.array(local.shard.kinds, object)[local.kinds(rows)]
    assert len(np.unique(rep.kinds(rows))) == len(set(names))
    assert all(len(set(names[rep.kinds(rows) == c])) == 1 for c in np.unique(rep.kinds(rows)))
    slots, want = rep.slot_entity(rows), local.slot_entity(rows)
    assert (slots >= 0).any() and np.array_equal(slots >= 0, want >= 0)
    assert all(len(set(want[slots == s])) == 1 for s in np.unique(slots[slots >= 0]))
    got, want = rep.actors(rows), local.actors(rows)   # global entity ids and shares: the one-shard build's
    assert len(got[1]) and all(np.array_equal(a, b) for a, b in zip(got, want)) and (got[2] > 0).all()
    # vectors: gathered in one pass over the four shards' files, the one-shard build's values
    picked = np.random.default_rng(0).permutation(rep.n)[:300]
    assert rep._vec_parts is not None and len(rep._vec_parts) == 4
    assert np.array_equal(rep.vectors(picked), local.vectors(picked))
    one_pass, rep._vec_parts = rep._vec_parts, None      # the per-shard gather (arrays of mixed types)
    assert np.array_equal(rep.vectors(picked), local.vectors(picked))
    rep._vec_parts = one_pass
    held = sum(getattr(rep, a).nbytes for a in GRAPH_ARRAYS + (
        "owner", "live", "ent_weight", "link_weight", "local_of", "token_count", "kind_code", "sup_by", "sup_at",
        "slot", "actor", "_vec_part", "_vec_row")) + rep._superseded.nbytes
    assert rep.nbytes == held and rep.describe().startswith("1500 events, ")


def test_coordinator_with_replica_answers_like_embedded_in_one_round(world):
    rep = open_local(world["four_dir"], replica=True)
    plain = open_local(world["four_dir"])
    chains = 0
    for q, kw in _cases(world["queries"]):
        want = world["one"].query(q, **kw)
        got = rep.query(q, **kw)
        _same(want, got, str(kw))
        if kw["type"] == "chain":
            chains += 1
            assert got.timings["on_replica"] and got.timings["expand_rounds"] == 0
            # rows' vectors and attributes (actors too), ids, names and payloads come from the
            # replica's files, and so do the searches after the seeds (the best chain's people's):
            # the seeds' Search round is the only one (one call per shard)
            assert got.timings["rpcs"] == 4 and got.timings["rpcs"] < plain.query(q, **kw).timings["rpcs"]
        else:   # nothing to expand; what the answer reads after the seeds is read here too
            assert not got.timings["on_replica"] and got.timings["rpcs"] == 4
    assert chains == 24


def test_a_query_lacking_a_shard_expands_through_the_others(world):
    """The replica would walk through the missing shard's rows; the answer must be the partial
    answer of the shards that answered, as without a replica."""
    rep = open_local(world["four_dir"], replica=True)
    plain = open_local(world["four_dir"])
    for c in (rep, plain):
        c.cluster.groups[2].replicas[0].fail = True
    q = world["queries"][0]
    got, want = rep.query(q, direction="both"), plain.query(q, direction="both")
    assert got.partial and got.missing_shards == [2] and not got.timings["on_replica"]
    assert [e.id for e in got.events] == [e.id for e in want.events]


def test_a_replica_the_shards_moved_past_is_not_used_then_reloaded(world, tmp_path):
    idx = tmp_path / "four"
    shutil.copytree(world["four_dir"], idx)
    coord = open_local(idx, replica=True)
    q = world["queries"][1]
    assert coord.query(q, direction="both").timings["on_replica"]
    # a cluster write: a copy of ten events under new ids, a day later, synced into every shard
    lines = (world["corpus"].dir / "events.jsonl").read_text().splitlines()[:10]
    events = [{**json.loads(x), "id": f"new-{i}", "time": json.loads(x)["time"] + 86_400, "links": []}
              for i, x in enumerate(lines)]
    vectors = np.load(world["corpus"].dir / "vectors.npy")[:10]
    writer = ClusterWriter(coord.cluster)
    assert writer.write("add", events, vectors)["acked"] == 10
    assert writer.sync()["synced"]
    coord._stats = None                      # new global sizes (a coordinator server's sync does this)
    coord.replica_reload_s = 3600.0          # keep the background reload from racing the first check
    coord._reload_at = time.monotonic() + 3600.0
    stale = coord.query(q, direction="both")
    assert not stale.timings["on_replica"]
    want = open_local(idx).query(q, direction="both")
    assert [e.id for e in stale.events] == [e.id for e in want.events]
    assert coord.refresh_replica()
    fresh = coord.query(q, direction="both")
    assert fresh.timings["on_replica"]
    _same(want, fresh)
    assert coord.replica.n == 1510


def test_background_reload_after_a_sync(world, tmp_path):
    idx = tmp_path / "four"
    shutil.copytree(world["four_dir"], idx)
    coord = open_local(idx, replica=True, replica_reload_s=0.0)
    lines = (world["corpus"].dir / "events.jsonl").read_text().splitlines()[:4]
    events = [{**json.loads(x), "id": f"bg-{i}", "links": []} for i, x in enumerate(lines)]
    writer = ClusterWriter(coord.cluster)
    writer.write("add", events, np.load(world["corpus"].dir / "vectors.npy")[:4])
    writer.sync()
    coord._stats = None
    q = world["queries"][2]
    assert not coord.query(q).timings["on_replica"]       # starts the reload
    deadline = time.monotonic() + 30
    while not coord.query(q).timings["on_replica"]:
        assert time.monotonic() < deadline, "the replica was not reloaded"
        time.sleep(0.05)


def test_replica_of_a_one_shard_index_is_refused(world):
    with pytest.raises(InvalidQueryError, match="partitioned"):
        GraphReplica(world["root"] / "one")


def test_a_replica_of_other_data_is_never_used_and_reloads_back_off(world, tmp_path, caplog):
    """--graph-replica naming another index than the shards serve: every chain expands through
    the shards (the right answer), a warning names the shards, and reloads back off."""
    other = tmp_path / "other"
    shutil.copytree(world["four_dir"], other)
    side = open_local(other)
    lines = (world["corpus"].dir / "events.jsonl").read_text().splitlines()[:3]
    writer = ClusterWriter(side.cluster)
    writer.write("add", [{**json.loads(x), "id": f"o-{i}", "links": []} for i, x in enumerate(lines)],
                 np.load(world["corpus"].dir / "vectors.npy")[:3])
    writer.sync()
    coord = open_local(world["four_dir"])
    coord.replica, coord.replica_reload_s, coord._reload_wait = GraphReplica(other), 0.0, 0.0
    q = world["queries"][3]
    with caplog.at_level("WARNING", logger="fastctx.coordinator"):
        for _ in range(3):
            got = coord.query(q, direction="both")
            assert not got.timings["on_replica"]
            _same(world["one"].query(q, direction="both"), got)
            deadline = time.monotonic() + 30
            while coord._reload_lock.locked():
                assert time.monotonic() < deadline
                time.sleep(0.02)
    assert "does not hold what shard(s) [0, 1, 2, 3] serve" in caplog.text
    assert coord._reload_wait >= 1.0


def test_a_checksummed_but_inconsistent_sidecar_is_refused_naming_it(world, tmp_path):
    """The replica hands the sidecar's links to a kernel that does not bounds-check: a link to a
    row outside the index is refused when the replica is read, naming the shard's directory."""
    from fastctx.errors import CorruptIndexError
    from fastctx.partition import read_sidecar, write_sidecar
    d = tmp_path / "four"
    shutil.copytree(world["four_dir"], d)
    arrays, meta = read_sidecar(d / "shard-002")
    arrays["out_dst"] = arrays["out_dst"].copy()
    arrays["out_dst"][0] = 10 ** 9
    write_sidecar(d / "shard-002", arrays, {k: v for k, v in meta.items() if k not in ("version", "npz", "checksum")})
    with pytest.raises(CorruptIndexError, match="shard-002.*outside"):
        GraphReplica(d)
