"""The whole-corpus pass as Ray tasks over ranges (fastctx/ray_order.py) against the in-process
pass (`partition.global_graph`, and `sidecar_arrays` for each shard): every array equal, dtype
and key order included, for 1, 2, 5 and 17 ranges,
on a real local Ray cluster of 2 CPUs and in process, on generated orgmem corpora (decisions
with `supersedes` links and implicit slot supersession) and on a git-like history with reverts,
re-lands, supersedes chains, decisions on shared slots, dangling links, links across ranges,
runs of equal times across range edges and input rows out of time order."""
from __future__ import annotations

import random

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the Ray build needs the optional 'ray' extra (pip install 'fastctx[ray]')")

from fastctx.corpus import LINK_CODE  # noqa: E402
from fastctx.derive import with_derived_links  # noqa: E402
from fastctx.encoder import HashingEncoder  # noqa: E402
from fastctx.errors import InvalidQueryError  # noqa: E402
from fastctx.params import BuildParams  # noqa: E402
from fastctx.partition import global_graph, local_parts, shard_of, sidecar_arrays  # noqa: E402
from fastctx.ray_order import ray_global_graph, ray_sidecars  # noqa: E402
from fastctx.sources import read_source, to_batch  # noqa: E402

BLOCKS = (1, 2, 5, 17)
T0, HOUR, DAY = 1_704_067_200, 3_600, 86_400



@pytest.fixture(params=[0, 3])
def generated(request, generated_3k):
    return with_derived_links(generated_3k(request.param), BuildParams())


def history(n=900, seed=11) -> list:
    """Commits and decisions in bursts sharing one time (a burst spans range edges), listed newest
    first, with reverts (of one event or three, some named by title only), re-landed titles,
    supersedes chains, decisions on a few shared slots
    (implicit supersession, some at equal times), links to far earlier events and to ids that
    are not in the corpus."""
    rng = random.Random(seed)
    ev, reverted = [], []
    for i in range(n):
        t = T0 + (i // 40) * DAY                       # 40 events per time: ties everywhere
        links, kind, ents = [], "commit", [f"file:src/m{rng.randrange(30)}.c", f"author:dev{rng.randrange(5)}"]
        text = f"area{i % 7}: change case {i}"
        r = rng.random()
        if i > 30 and r < 0.06:                         # one event, or three at once
            xs = rng.sample(range(0, i), 1 if rng.random() < 0.7 else 3)
            text = f'Revert "area{xs[0] % 7}: change case {xs[0]}"'
            links = [{"to": f"e{x:04d}", "type": "reverts"} for x in xs]
            if rng.random() < 0.25:                     # the first named by its title only
                links = links[1:]
            reverted += xs
        elif reverted and r < 0.10:
            x = reverted.pop(0)
            text = f"Reland: area{x % 7}: change case {x}"
        elif r < 0.25:
            kind, ents = "decision", [f"decision:slot{rng.randrange(6)}", "team:core"]
            text = f"decided the policy {i}"
            if i > 10 and rng.random() < 0.5:
                links = [{"to": f"e{rng.randrange(0, i):04d}", "type": "supersedes"}]
        if rng.random() < 0.1:
            links.append({"to": f"missing{i}", "type": "references"})          # dangling
        if i > 5 and rng.random() < 0.3:
            links.append({"to": f"e{rng.randrange(0, i):04d}", "type": "references"})
        if i > 5 and rng.random() < 0.05:   # two links to one event, different types
            x = rng.randrange(0, i)
            links += [{"to": f"e{x:04d}", "type": "fixes"}, {"to": f"e{x:04d}", "type": "follow_up"}]
        ev.append({"id": f"e{i:04d}", "time": t, "source": "git", "kind": kind, "text": text,
                   "entities": ents, "links": links})
    ev.reverse()
    return ev


def _same(want: dict, got: dict) -> None:
    assert set(want) == set(got)
    for k, v in want.items():
        if isinstance(v, np.ndarray):
            assert got[k].dtype == v.dtype, k
            assert np.array_equal(got[k], v), k
        else:
            assert got[k] == v, k


def _same_sidecars(batch, params, parts, g, shard_in, n_shards, blocks, executor) -> None:
    got = ray_sidecars(batch, params, parts, shard_in, n_shards, blocks=blocks, executor=executor)
    shard_no = shard_in[g["order"]]
    assert np.array_equal(got["order"], g["order"]) and np.array_equal(got["shard_no"], shard_no)
    assert (got["n"], got["n_links"], got["dangling"], got["n_entities"]) == \
        (g["n"], g["n_links"], g["dangling"], len(g["ent_names"]))
    arrays = got["sidecars"] if executor == "inline" else ray.get(got["sidecars"])
    for k in range(n_shards):
        want = sidecar_arrays(g, shard_no, k, n_shards)
        assert list(arrays[k]) == list(want)    # key order too: np.savez writes them in that order
        _same(want, arrays[k])


def _check(batch, params, cluster_on: bool, shards=(1, 3)) -> dict:
    parts = local_parts(batch, params)
    want = global_graph(batch, params, parts)
    for blocks in BLOCKS:
        _same(want, ray_global_graph(batch, params, parts, blocks=blocks, executor="inline"))
        if cluster_on:
            _same(want, ray_global_graph(batch, params, parts, blocks=blocks))
        for n_shards in shards:
            for key in ("id", "kind"):   # by kind: a few shards hold everything, the others nothing
                shard_in = shard_of(batch, n_shards, key)
                _same_sidecars(batch, params, parts, want, shard_in, n_shards, blocks, "inline")
                if cluster_on and key == "id":
                    _same_sidecars(batch, params, parts, want, shard_in, n_shards, blocks, "ray")
    return want


def test_generated_corpora_same_arrays(ray_cluster, generated):
    want = _check(generated, BuildParams(), True)
    assert (want["sup_by"] >= 0).sum() >= 5          # decisions superseded, explicitly and by slot
    assert want["n_links"] > 500


def test_git_like_history_same_arrays(ray_cluster):
    params = BuildParams(actor_window_days=2, comention_window_days=3)
    batch = with_derived_links(to_batch(read_source(history()), HashingEncoder(dim=32)), params)
    want = _check(batch, params, True)
    assert want["dangling"] > 20
    assert (want["sup_by"] >= 0).sum() > 50
    t = want["times"]
    assert len(np.unique(t)) < len(t) // 20        # long runs of equal times
    for kind in ("relands", "reverts", "title_reverts", "supersedes", "same_actor", "co_mention"):
        assert (np.asarray(batch.link_type) == LINK_CODE[kind]).any(), kind
    relands = np.flatnonzero(np.asarray(batch.link_type) == LINK_CODE["relands"])
    reverters = {batch.ids[s] for s, ty in zip(np.asarray(batch.link_src).tolist(), batch.link_type)
                 if ty in (LINK_CODE["reverts"], LINK_CODE["title_reverts"])}
    assert any(batch.link_to[j] not in reverters for j in relands.tolist())   # re-lands after a multi revert


def test_ranges_without_derived_links_or_entities(ray_cluster):
    """No links, no entities, more ranges than events, one event: still the same arrays."""
    params = BuildParams(actor_k=0, comention_k=0, relands=False, text_terms=False, text_words=False)
    ev = [{"id": f"x{i}", "time": T0 + (i % 2) * HOUR, "source": "s", "kind": "note", "text": "+1"}
          for i in range(5)]
    for sub in (ev, ev[:1]):
        batch = to_batch(read_source(sub), HashingEncoder(dim=8))
        _check(batch, params, True, shards=(1, 7))


def test_default_ranges_and_parts(ray_cluster):
    batch = to_batch(read_source(history(200, 3)), HashingEncoder(dim=16))
    params = BuildParams()
    _same(global_graph(batch, params), ray_global_graph(batch, params))


def test_bad_executor_or_no_session_is_a_clear_error():
    batch = to_batch(read_source(history(20, 1)), HashingEncoder(dim=8))
    with pytest.raises(InvalidQueryError, match="executor"):
        ray_global_graph(batch, BuildParams(), executor="dask")
    if not ray.is_initialized():
        with pytest.raises(InvalidQueryError, match="ray.init"):
            ray_global_graph(batch, BuildParams())
