"""fastctx/csr.py (several CSR lists at once) against plain-Python references."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fastctx.csr import marked_lists, min_marked, ranges

lists = st.lists(st.lists(st.integers(0, 30), max_size=6), max_size=8)


def _csr(rows_of):
    ptr = np.zeros(len(rows_of) + 1, np.int64)
    ptr[1:] = np.cumsum([len(x) for x in rows_of])
    vals = np.array([v for x in rows_of for v in x], np.int64)
    return ptr, vals


@settings(max_examples=200, deadline=None)
@given(lists, st.data())
def test_ranges_is_the_concatenated_aranges(rows_of, data):
    ptr, _ = _csr(rows_of)
    pick = data.draw(st.lists(st.integers(0, max(len(rows_of) - 1, 0)), max_size=10)) if rows_of else []
    starts, counts = ptr[pick], ptr[np.asarray(pick, np.int64) + 1] - ptr[pick]
    want = [i for s, c in zip(starts.tolist(), counts.tolist()) for i in range(s, s + c)]
    got = ranges(starts, counts)
    assert got.dtype == np.int64 and got.tolist() == want


@settings(max_examples=200, deadline=None)
@given(lists, st.lists(st.booleans(), min_size=31, max_size=31), st.data())
def test_min_marked_is_the_smallest_marked_value_per_row(rows_of, marked, data):
    ptr, vals = _csr(rows_of)
    pick = data.draw(st.lists(st.integers(0, max(len(rows_of) - 1, 0)), max_size=10)) if rows_of else []
    marked = np.array(marked, bool)
    want = [min((v for v in rows_of[r] if marked[v]), default=-1) for r in pick]
    assert min_marked(ptr, vals, np.asarray(pick, np.int64), marked).tolist() == want


@settings(max_examples=100, deadline=None)
@given(lists, st.lists(st.booleans(), min_size=31, max_size=31), st.data())
def test_min_marked_compares_keys_when_given(rows_of, marked, data):
    ptr, vals = _csr(rows_of)
    pick = data.draw(st.lists(st.integers(0, max(len(rows_of) - 1, 0)), max_size=10)) if rows_of else []
    marked, key = np.array(marked, bool), np.arange(31)[::-1] * 7   # keys in the other order
    want = [min((key[v] for v in rows_of[r] if marked[v]), default=-1) for r in pick]
    assert min_marked(ptr, vals, np.asarray(pick, np.int64), marked, key).tolist() == want


@settings(max_examples=200, deadline=None)
@given(lists, st.lists(st.booleans(), min_size=31, max_size=31), st.booleans(), st.data())
def test_marked_lists_are_each_rows_marked_values_in_order(rows_of, marked, keyed, data):
    ptr, vals = _csr(rows_of)
    pick = data.draw(st.lists(st.integers(0, max(len(rows_of) - 1, 0)), max_size=10)) if rows_of else []
    marked, key = np.array(marked, bool), (np.arange(31)[::-1] * 7 if keyed else None)
    want = [[(key[v] if keyed else v) for v in rows_of[r] if marked[v]] for r in pick]
    got_ptr, got = marked_lists(ptr, vals, np.asarray(pick, np.int64), marked, key)
    assert got_ptr.dtype == np.int64 and got.dtype == np.int64
    assert [got[got_ptr[i]:got_ptr[i + 1]].tolist() for i in range(len(pick))] == want


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=8), max_size=12), st.lists(st.text(max_size=4), max_size=3))
def test_a_mapped_string_column_tells_prefixes_as_str_startswith(tmp_path_factory, names, prefixes):
    from fastctx.columns import StringColumn, write_strings
    d = tmp_path_factory.mktemp("names")
    write_strings(d, "names", names)
    col = StringColumn(d, "names", len(names))
    assert col.startswith(prefixes).tolist() == [nm.startswith(tuple(prefixes)) for nm in names]
