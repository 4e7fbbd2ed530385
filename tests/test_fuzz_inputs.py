"""Fuzz campaign (bounded to about a minute): hostile corpora, meta.json, queries, manifests and
CLI calls must end in a result or a fastctx error, never a raw traceback. The generators live in
bench/fuzz_inputs.py, which runs them longer. Hand-made cases come first."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fastctx.errors import CorpusError, FastctxError
from fastctx.index import Index, build, verify

_spec = importlib.util.spec_from_file_location(
    "fuzz_inputs", Path(__file__).resolve().parents[1] / "bench" / "fuzz_inputs.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory):
    return fuzz.Fuzzer(tmp_path_factory.mktemp("fuzz"), seed=7)


# ------------------------------------------------------------------------------------ hand-made
HAND = {
    "lone surrogate in text": '{"id": "a", "time": 1, "source": "s", "kind": "k", "text": "\\ud800"}',
    "lone surrogate in id": '{"id": "\\udc00", "time": 1, "source": "s", "kind": "k", "text": "t"}',
    "lone surrogate in entity": '{"id": "a", "time": 1, "source": "s", "kind": "k", "text": "t", '
                                '"entities": ["\\ud800"]}',
    "100000-deep attribute": '{"id": "a", "time": 1, "source": "s", "kind": "k", "text": "t", "x": '
                             + fuzz.deep(100_000) + "}",
    "100-deep attribute": '{"id": "a", "time": 1, "source": "s", "kind": "k", "text": "t", "x": '
                          + fuzz.deep(100) + "}",
    "2**70 time": '{"id": "a", "time": %d, "source": "s", "kind": "k", "text": "t"}' % 2**70,
    "2**70 tokens": '{"id": "a", "time": 1, "source": "s", "kind": "k", "text": "t", "tokens": %d}' % 2**70,
    "2**70 attribute": '{"id": "a", "time": 1, "source": "s", "kind": "k", "text": "t", "n": %d}' % 2**70,
    "-2**70 nested attribute": '{"id": "a", "time": 1, "source": "s", "kind": "k", "text": "t", '
                               '"n": {"m": [%d]}}' % -2**70,
    "2**70 in acl": '{"id": "a", "time": 1, "source": "s", "kind": "k", "text": "t", "acl": [%d]}' % 2**70,
    "NaN attribute": '{"id": "a", "time": 1, "source": "s", "kind": "k", "text": "t", "score": NaN}',
    "Infinity nested attribute": '{"id": "a", "time": 1, "source": "s", "kind": "k", "text": "t", '
                                 '"m": {"x": [1, -Infinity]}}',
}


@pytest.mark.parametrize("name", list(HAND))
def test_hand_made_event_lines_are_refused_by_name(name, tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    (d / "events.jsonl").write_text(HAND[name] + "\n")
    (d / "meta.json").write_text('{"format": "orgmem-v1"}')
    with pytest.raises(CorpusError, match="events.jsonl:1"):
        build(d, tmp_path / "i")


@pytest.mark.parametrize("text", [fuzz.deep(100_000), '{"format": "orgmem-v1", "name": "\\ud800"', "\xff"])
def test_hand_made_meta_json(text, tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    (d / "events.jsonl").write_text(json.dumps(fuzz.base_events(1)[0]) + "\n")
    (d / "meta.json").write_text(text, errors="surrogateescape")
    with pytest.raises(CorpusError, match="meta.json"):
        build(d, tmp_path / "i")


def test_records_through_add_are_checked_too(tmp_path):
    idx = Index.create(tmp_path / "i", encoder="hashing")
    for bad in ({"text": "\ud800"}, {"x": 2**70}, {"x": json.loads(fuzz.deep(100))}):
        rec = {"id": "a", "time": 1, "source": "s", "kind": "k", "text": "t", **bad}
        with pytest.raises(CorpusError):
            idx.add([rec])
    assert idx.n == 0 and verify(tmp_path / "i") == []


# ------------------------------------------------------------------------------------ generated
@pytest.mark.parametrize("target", fuzz.Fuzzer.TARGETS)
def test_generated_inputs_never_raise_a_traceback(fuzzer, target):
    n0 = fuzzer.tried
    fuzzer.run(6, targets=(target,))
    assert fuzzer.tried > n0
    assert not fuzzer.tracebacks, "\n".join(f"{t}: {d}\n{tb}" for t, d, tb in fuzzer.tracebacks[:3])


def _json_or_none(raw: bytes):
    """The parsed JSON value of `raw`; a sentinel for bytes that are not JSON. A whitespace byte
    swapped for another (a newline for a carriage return) changes the file, not the manifest."""
    import json
    try:
        return json.loads(raw)
    except ValueError:
        return ("not json", raw)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6))
@example(edits=[(1, 13)])   # a newline made a carriage return: same manifest, nothing to report
def test_byte_edits_of_a_manifest_are_reported(fuzzer, edits):
    import shutil
    d = fuzzer.work / "hyp-manifest"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(fuzzer.index, d)
    mpath = d / "shard-000" / "MANIFEST.json"
    b = bytearray(mpath.read_bytes())
    for pos, val in edits:
        b[pos % len(b)] = val
    mpath.write_bytes(bytes(b))
    problems = verify(d)
    if _json_or_none(bytes(b)) != _json_or_none((fuzzer.index / "shard-000" / "MANIFEST.json").read_bytes()):
        assert problems   # the checksum (of the canonical JSON) catches every change of content
    try:
        Index(d)
    except FastctxError:
        pass
