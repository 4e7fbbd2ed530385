"""One query's independent parts on several threads (fastctx.parallel): the same results as one
thread, for the exact scan, the older-version test and a batch of expansions, also while other
threads hold every worker."""
import os
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from pyroaring import BitMap

from conftest import make_corpus, query_vectors_near

from fastctx import heads
from fastctx.filters import Allowed
from fastctx.graph import LocalGraph
from fastctx.index import Index, build
from fastctx.parallel import cuts, run_parts
from fastctx.params import AnswerParams, SearchParams
from fastctx.seeds import SPLIT_MIN_ROWS, exact_search


def test_cuts_cover_every_item_once_in_order():
    for n in (0, 1, 7, 100, 4096, 10_001):
        for threads in (1, 2, 3, 8):
            for min_part in (1, 10, 2048):
                got = cuts(n, threads, min_part)
                assert got[0][0] == 0 and got[-1][1] == n
                assert all(a[1] == b[0] for a, b in zip(got, got[1:]))
                assert len(got) <= max(1, threads)
                assert len(got) == 1 or min(b - a for a, b in got) >= min_part


def test_run_parts_keeps_order_and_runs_in_the_caller_when_no_worker_is_idle():
    assert run_parts([]) == []
    assert run_parts([(pow, (2, i)) for i in range(5)]) == [1, 2, 4, 8, 16]
    # every worker busy (held by another query's parts): the parts still complete, in the caller
    release, started = threading.Event(), threading.Semaphore(0)

    def hold():
        started.release()
        release.wait(30)
        return "held"

    other = threading.Thread(target=run_parts, args=([(int, ())] + [(hold, ())] * 4,))
    other.start()
    for _ in range(4):      # the four workers the first call above started
        assert started.acquire(timeout=10)
    assert run_parts([(pow, (3, i)) for i in range(4)]) == [1, 3, 9, 27]
    release.set()
    other.join(10)
    assert not other.is_alive()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_runs_parts_without_the_parents_workers():
    run_parts([(time.sleep, (0.05,))] * 3)       # two workers at once in the parent, idle now
    pid = os.fork()
    if pid == 0:   # the child: its parts must not wait on threads that were not copied
        ok = run_parts([(pow, (5, i)) for i in range(3)]) == [1, 5, 25]
        os._exit(0 if ok else 1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("a forked child hung running parts")


def test_split_exact_scan_equals_one_thread():
    rng = np.random.default_rng(0)
    n = 5 * SPLIT_MIN_ROWS + 17
    v = rng.standard_normal((n, 24)).astype(np.float32)
    q = rng.standard_normal(24).astype(np.float32)
    picked = np.sort(rng.choice(n, 3 * SPLIT_MIN_ROWS + 5, replace=False)).astype(np.uint32)
    for allowed in (Allowed(3, n - 2, None, n - 5), Allowed(0, n, BitMap(picked), len(picked))):
        want = exact_search(v, q, allowed, 500, threads=1)
        for threads in (2, 3, 8):
            got = exact_search(v, q, allowed, 500, threads=threads)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])


def test_split_older_version_test_equals_one_thread():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((600, 16)).astype(np.float32)
    times = rng.integers(0, 50, 600).astype(np.int64)
    pool = rng.choice(600, 200, replace=False).astype(np.int64)
    want = heads.later_cos(v, times, pool, threads=1)
    for threads in (2, 4):
        np.testing.assert_array_equal(heads.later_cos(v, times, pool, threads=threads), want)


@pytest.mark.parametrize("expansion", ["best_first", "ppr"])
def test_split_expansions_equal_one_thread(tmp_path, expansion):
    c = make_corpus(tmp_path / "c", 800, seed=5, dim=16, n_buckets=60)
    index, _ = build(c.dir, tmp_path / "idx")
    one = LocalGraph(index, params=AnswerParams(threads=1, expansion=expansion))
    many = LocalGraph(index, params=AnswerParams(threads=4, expansion=expansion))
    seeds = np.arange(0, 800, 9, dtype=np.int64)           # 89 seeds: several parts
    scores = np.linspace(1.0, 0.5, len(seeds)).astype(np.float32)
    for direction in (1, 2, 3):
        want = one.expand(seeds, scores, direction, 0, 2**40, None)
        got = many.expand(seeds, scores, direction, 0, 2**40, None)
        assert len(got) == len(want) == len(seeds)
        for g, w in zip(got, want):
            for a, b in zip(g, w):
                np.testing.assert_array_equal(a, b)
    # and whole answers
    idx1 = Index(tmp_path / "idx", answer_params=AnswerParams(threads=1, expansion=expansion))
    idx4 = Index(tmp_path / "idx", answer_params=AnswerParams(threads=4, expansion=expansion))
    for q in query_vectors_near(c.centers, 5, seed=6):
        a, b = idx1.query(q), idx4.query(q)
        assert a.events and [(e.id, e.why) for e in a.events] == [(e.id, e.why) for e in b.events]


def test_many_questions_at_once_split_or_not_give_the_one_thread_answers(tmp_path):
    """Eight threads asking at once: each question's parts find idle workers or run in its own
    thread, and every answer is the one-thread answer."""
    c = make_corpus(tmp_path / "c", 6000, seed=8, dim=16, n_buckets=150)
    build(c.dir, tmp_path / "idx")
    scan_all = SearchParams(exact_max_rows=10**6)               # 6,000-row exact scans: split in two
    one = Index(tmp_path / "idx", search_params=replace(scan_all, scan_threads=1),
                answer_params=AnswerParams(threads=1))
    many = Index(tmp_path / "idx", search_params=scan_all)
    qs = query_vectors_near(c.centers, 24, seed=9)
    kinds = [("chain", {}), ("current", {}), ("chain", {"direction": "both"})]
    want = [[(e.id, e.why) for e in one.query(q, type=t, **kw).events] for q in qs for t, kw in kinds]
    assert any(want)
    got: dict[int, list] = {}

    def ask(j: int) -> None:
        for i in range(j, len(qs), 8):
            for m, (t, kw) in enumerate(kinds):
                got[i * len(kinds) + m] = [(e.id, e.why) for e in many.query(qs[i], type=t, **kw).events]

    threads = [threading.Thread(target=ask, args=(j,)) for j in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [got[i] for i in range(len(want))] == want
