"""Derived links computed by Ray tasks over time blocks (fastctx/ray_links.py) against the
in-process pass (`derive.with_derived_links`): the same link arrays, in the same order, for 1, 2,
5 and 17 blocks, on generated orgmem corpora and on a git-like history with files, authors,
reverts and re-lands, ties in time across block edges and input rows out of time order."""
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
from fastctx.ray_graph import block_bounds  # noqa: E402
from fastctx.ray_links import SIM_BLOCK, ray_derived_links  # noqa: E402
from fastctx.sources import read_source, to_batch  # noqa: E402

BLOCKS = (1, 2, 5, 17)
T0, HOUR, DAY = 1_704_067_200, 3_600, 86_400



def git_events(n=700, seed=7) -> list:
    """Commits in bursts of equal times, listed newest first (input rows against time order), by
    a few authors, touching files from a small tree (some on most commits), with reverts of
    earlier commits (some several at once, some named by title only) and later commits repeating
    the reverted titles."""
    rng = random.Random(seed)
    files = [f"file:src/m{i}.c" for i in range(60)] + ["file:README", "path:docs/"]
    titles = [f"area{i % 9}: change the handling of case {i}" for i in range(n)]
    ev, reverted = [], []
    for i in range(n):
        t = T0 + (i // 6) * 2 * HOUR + (i % 6 // 3) * 30     # bursts: up to 3 commits share a time
        text = titles[i]
        links = []
        if i > 20 and rng.random() < 0.06:                  # revert an earlier commit, or three
            xs = rng.sample(range(i - 20, i), 1 if rng.random() < 0.7 else 3)
            text, links = f'Revert "{titles[xs[0]]}"', [{"to": f"c{x:04d}", "type": "reverts"} for x in xs]
            if rng.random() < 0.3:                          # named by its title only
                links = links[1:]
            reverted += [titles[x] for x in xs]
        elif reverted and rng.random() < 0.05:             # repeat a reverted title (a re-land)
            text = "Reland: " + reverted.pop(rng.randrange(len(reverted)))
        touched = rng.sample(files[:60], rng.randint(1, 4)) + (["file:README"] if rng.random() < 0.7 else []) \
            + (["path:docs/"] if rng.random() < 0.1 else [])
        ev.append({"id": f"c{i:04d}", "time": t, "source": "git", "kind": "commit", "text": text + "\n\nbody",
                   "entities": touched + [f"author:dev{rng.randrange(7)}", "service:core"], "links": links})
    ev.reverse()
    return ev


def _git_history(n=700, seed=7):
    return to_batch(read_source(git_events(n, seed)), HashingEncoder(dim=32))


GIT_PARAMS = [
    BuildParams(similar_k=3, similar_z=0.5, similar_window_days=4, similar_max_candidates=600,
                actor_window_days=0.5, comention_window_days=3, comention_scale_days=1),
    BuildParams(actor_k=3, actor_window_days=5, comention_k=2, comention_window_days=365, comention_max_share=0.5),
]
GEN_PARAMS = [
    BuildParams(similar_k=3, similar_window_days=30, similar_max_candidates=700, actor_window_days=3),
    BuildParams(),
]


def _same(a, b) -> None:
    assert a.link_src.dtype == b.link_src.dtype and np.array_equal(a.link_src, b.link_src)
    assert a.link_type.dtype == b.link_type.dtype and np.array_equal(a.link_type, b.link_type)
    assert a.link_to == b.link_to
    assert a.ids is b.ids and a.entity_names is b.entity_names and a.vectors is b.vectors


def _counts(batch) -> dict:
    return {name: int((np.asarray(batch.link_type) == code).sum()) for name, code in LINK_CODE.items()}


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("pi", range(len(GEN_PARAMS)))
def test_generated_corpora_give_the_in_process_links(ray_cluster, generated_3k, pi, seed):
    params = GEN_PARAMS[pi]
    generated = generated_3k(seed)
    want = with_derived_links(generated, params)
    got_counts = _counts(want)
    assert got_counts["same_actor"] > 0 and (got_counts["similar"] > 0) == (params.similar_k > 0)
    for blocks in BLOCKS:
        _same(ray_derived_links(generated, params, blocks=blocks), want)


@pytest.mark.parametrize("pi", range(len(GIT_PARAMS)))
def test_git_history_gives_the_in_process_links(ray_cluster, pi):
    batch, params = _git_history(), GIT_PARAMS[pi]
    want = with_derived_links(batch, params)
    c = _counts(want)
    assert c["co_mention"] > 0 and c["same_actor"] > 0 and c["relands"] > 0
    t = np.sort(batch.times)
    # ties in time straddle block edges, and blocks are smaller than the windows
    cuts = block_bounds(len(batch), 17)[1:-1]
    assert any(t[p - 1] == t[p] for p in cuts)
    assert (t[cuts[1]] - t[cuts[0]]) < params.comention_window_days * DAY
    for blocks in BLOCKS:
        _same(ray_derived_links(batch, params, blocks=blocks), want)


def test_similar_blocks_smaller_than_the_window_and_the_candidate_cap(ray_cluster):
    """More Ray blocks than the function's internal blocks, a window of many blocks, and the
    candidate cap biting: halos start on internal block edges, so the floats are the same."""
    batch = _git_history(n=2 * SIM_BLOCK + 300)
    params = BuildParams(similar_k=4, similar_z=0.0, similar_window_days=60, similar_max_candidates=SIM_BLOCK + 100,
                         actor_k=0, relands=False, comention_k=0)
    want = with_derived_links(batch, params)
    assert _counts(want)["similar"] > 1000
    for blocks in (2, 3, 17):
        _same(ray_derived_links(batch, params, blocks=blocks), want)


def test_inline_executor_and_small_batches():
    """The same tasks in process; batches too small for any link come back unchanged."""
    batch = _git_history(n=700)      # re-lands after reverts of one event and of three
    params = GIT_PARAMS[1]
    _same(ray_derived_links(batch, params, blocks=5, executor="inline"), with_derived_links(batch, params))
    one = batch.select([0])
    assert ray_derived_links(one, params, executor="inline") is one
    off = BuildParams(actor_k=0, relands=False, comention_k=0, cocite_k=0, title_reverts=False)
    assert ray_derived_links(batch, off, executor="inline") is batch
    with pytest.raises(InvalidQueryError, match="executor must be"):
        ray_derived_links(batch, params, executor="dask")
