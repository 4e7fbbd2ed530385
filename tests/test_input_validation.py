"""Input validation found by an audit: each bad input (a vectors.npy that is an .npz archive or has
a broken header, a JSONL integer beyond Python's 4300-digit limit, a malformed meta.json
params.encoder_spec, a damaged index marker fastctx.json) ends in a fastctx error that names the
file and the field or line, never a traceback, and a refused build writes nothing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import fastctx

from conftest import ORGMEM, copy_index, event, leftovers, need_orgmem, unit_rows, write_corpus
from fastctx.cli import main
from fastctx.corpus import read_events
from fastctx.encoder import EncoderError, from_record, record_problem
from fastctx.errors import CorpusError, CorruptIndexError
from fastctx.index import Index, build, verify

DIM = 16


def cli_fails(*args) -> str:
    """Run the CLI in-process: a non-zero exit through click's error path, no traceback."""
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code != 0, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)   # not an uncaught exception
    assert "Traceback" not in res.output
    return res.output


def texts(n: int = 6) -> list:
    return [event(i, text=f"note {i} about the ledger retry service") for i in range(n)]


def vector_corpus(root: Path, **meta) -> Path:
    """Six events with unit vectors of dim DIM (meta overrides meta.json keys)."""
    vecs = unit_rows(np.random.default_rng(0).standard_normal((6, DIM)))
    return write_corpus(root, texts(), vecs, meta=meta or None)


def text_corpus(root: Path, **meta) -> Path:
    """Six events with text and no vectors.npy (embedded at build time)."""
    root = vector_corpus(root, **meta)
    (root / "vectors.npy").unlink()
    return root


def assert_nothing_built(tmp_path: Path, name: str = "index") -> None:
    assert not (tmp_path / name).exists() and leftovers(tmp_path, name) == []


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """The audit's corpus: 50 generated events with vectors (dim 384)."""
    need_orgmem()
    out = tmp_path_factory.mktemp("gen") / "c"
    subprocess.run([sys.executable, str(ORGMEM / "generate.py"), str(out), "--events", "50", "--seed", "1",
                    "--quiet"], check=True)
    return out


def copy_corpus(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("meta.json", "events.jsonl", "vectors.npy"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


# ------------------------------------------------------------------------------------ 1. vectors.npy
def test_npz_archive_named_vectors_npy(generated, tmp_path):
    c = copy_corpus(generated, tmp_path / "c")
    with open(c / "vectors.npy", "wb") as f:      # np.savez to an open file keeps the name
        np.savez(f, vectors=np.load(generated / "vectors.npy"))
    with pytest.raises(CorpusError, match=r"not a readable \.npy array \(an \.npz archive") as e:
        build(c, tmp_path / "index")
    assert e.value.file.endswith("vectors.npy")
    assert_nothing_built(tmp_path)
    assert "vectors.npy" in cli_fails("build", c, tmp_path / "index", "--quiet")


def _set_shape(path: Path, shape: bytes) -> None:
    """Replace the shape text of a .npy header, keeping the header's length (its padding)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[8:10], "little")
    header = raw[10:10 + n].replace(b"(50, 384)", shape).rstrip(b" \n").ljust(n - 1) + b"\n"
    assert len(header) == n
    path.write_bytes(raw[:10] + header + raw[10 + n:])


@pytest.mark.parametrize("shape, why", [
    (b"(50, 10**", "header does not parse"),                  # tokenize.TokenError inside NumPy
    (b"(10**1000, 384)", ""),                                  # not a literal
    (b"(99999999999999999999999, 384)", "impossible shape"),  # OverflowError inside NumPy
    (b"(1000000000, 384)", "the file has"),                    # claims 1.5 TB: refused, not allocated
])
def test_broken_npy_header(generated, tmp_path, shape, why):
    c = copy_corpus(generated, tmp_path / "c")
    _set_shape(c / "vectors.npy", shape)
    with pytest.raises(CorpusError, match="not a readable .npy array") as e:
        read_events(c)
    assert e.value.file.endswith("vectors.npy") and why in str(e.value), str(e.value)
    assert "vectors.npy" in cli_fails("build", c, tmp_path / "index", "--quiet")
    assert_nothing_built(tmp_path)


def test_empty_vectors_still_load(tmp_path):
    """The plain-load fallback still reads what it is for: a valid 0-row array."""
    c = write_corpus(tmp_path / "c", [], np.zeros((0, DIM), np.float32), dim=DIM)
    assert len(read_events(c)) == 0


# ------------------------------------------------------------------------------------ 2. huge integer
def test_integer_over_4300_digits_in_a_jsonl_line(generated, tmp_path):
    c = copy_corpus(generated, tmp_path / "c")
    lines = (c / "events.jsonl").read_text().splitlines()
    lines[3] = lines[3][:-1] + ', "big": ' + "9" * 5000 + "}"
    (c / "events.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match="not valid JSON .*4300 digits") as e:
        build(c, tmp_path / "index")
    assert e.value.file.endswith("events.jsonl") and e.value.line == 4
    assert_nothing_built(tmp_path)
    assert "events.jsonl:4" in cli_fails("build", c, tmp_path / "index", "--quiet")


# ------------------------------------------------------------------------------------ 3. encoder_spec
@pytest.mark.parametrize("with_vectors, spec, field, why", [
    (True, {"name": "bogus"}, "params.encoder_spec.name", "unknown encoder"),
    (True, {"name": "hashing", "dim": "x"}, "params.encoder_spec.name", "unknown encoder"),
    (True, {"name": "hashing-v1", "dim": float(DIM)}, "params.encoder_spec.dim", "got float"),
    (True, {"name": "sentence-transformers", "model": 5, "dim": DIM}, "params.encoder_spec.model", "got integer 5"),
    (True, 5, "params.encoder_spec", "or a spec string, got integer 5"),
    (True, "word2vec", "params.encoder_spec", "unknown encoder 'word2vec'"),
    (False, {"name": "hashing-v1", "dim": "x"}, "params.encoder_spec.dim", "got string"),
    (False, {"name": "hashing-v1", "dim": 10**12}, "params.encoder_spec.dim", "[8, 65536]"),
    (False, {"name": "hashing-v1", "dim": 0}, "params.encoder_spec.dim", "[8, 65536]"),
    (False, {"name": "hashing-v1", "dim": 256, "title_weight": "x"}, "params.encoder_spec.title_weight", "got string"),
    (False, {"name": "hashing-v1", "dim": 256, "nnz": 17}, "params.encoder_spec.nnz", "[1, 16]"),
])
def test_bad_encoder_spec_in_meta_json(tmp_path, with_vectors, spec, field, why):
    make = vector_corpus if with_vectors else text_corpus
    c = make(tmp_path / "c", params={"encoder_spec": spec})
    with pytest.raises(CorpusError) as e:
        build(c, tmp_path / "index")
    assert e.value.file.endswith("meta.json") and e.value.field == field, str(e.value)
    assert why in str(e.value), str(e.value)
    assert_nothing_built(tmp_path)
    out = cli_fails("build", c, tmp_path / "index", "--quiet")
    assert "meta.json" in out and field in out
    assert_nothing_built(tmp_path)


def test_hashing_encoder_named_for_a_dim_it_cannot_make(tmp_path):
    """params.encoder "hashing-v1" with vectors of dim 4: that record could never be re-created."""
    c = vector_corpus(tmp_path / "c", params={"encoder": "hashing-v1"}, dim=4)
    with pytest.raises(CorpusError, match="params.encoder names hashing-v1") as e:
        build(c, tmp_path / "index")
    assert e.value.field == "dim" and e.value.file.endswith("meta.json")


def test_valid_encoder_specs_are_recorded_as_before(tmp_path):
    """Valid specs pass untouched: the marker records them exactly as meta.json gives them."""
    rec = {"name": "hashing-v1", "model": None, "dim": DIM, "normalize": True, "title_weight": 1.0}
    c = vector_corpus(tmp_path / "c", params={"encoder_spec": rec})
    idx, _ = build(c, tmp_path / "index")
    assert json.loads((tmp_path / "index" / "fastctx.json").read_text())["encoder"] == rec
    assert idx.search("note 3 about the ledger retry service", k=1).events()
    noted = {**rec, "converter": "someone else's", "device": "cpu"}   # fields no encoder reads: kept, not read
    c3 = vector_corpus(tmp_path / "c3", params={"encoder_spec": noted})
    build(c3, tmp_path / "index3")
    assert json.loads((tmp_path / "index3" / "fastctx.json").read_text())["encoder"] == noted
    assert fastctx.open(tmp_path / "index3").search("note 3 about the ledger retry service", k=1).events()
    st = {"name": "sentence-transformers", "model": "some/model", "dim": None, "normalize": True}
    c2 = vector_corpus(tmp_path / "c2", params={"encoder_spec": st})   # dim null: recorded as given
    build(c2, tmp_path / "index2")
    assert json.loads((tmp_path / "index2" / "fastctx.json").read_text())["encoder"] == st


# ------------------------------------------------------------------------------------ 4. the marker
@pytest.fixture(scope="module")
def text_index(tmp_path_factory) -> Path:
    """A hashing-v1 index (dim 256) built from text: its marker records the encoder."""
    out = tmp_path_factory.mktemp("marker") / "index"
    build(texts(), out)
    return out


def _marker(src: Path, dst: Path, edit) -> Path:
    """A copy of the index at `src` whose fastctx.json was changed by `edit(marker dict)`."""
    path = copy_index(src, dst) / "fastctx.json"
    marker = json.loads(path.read_text())
    edit(marker)
    path.write_text(json.dumps(marker))
    return dst


def _set(*keys_value):
    """An edit of the marker: _set("encoder", "dim", "x") sets marker["encoder"]["dim"] = "x"."""
    *keys, value = keys_value

    def edit(m):
        for k in keys[:-1]:
            m = m[k]
        m[keys[-1]] = value
    return edit


@pytest.mark.parametrize("edit, field, why", [
    (_set("encoder", "dim", "x"), "encoder.dim", "got string"),
    (_set("encoder", "title_weight", "x"), "encoder.title_weight", "got string"),
    (_set("encoder", "dim", 10**12), "encoder.dim", "[8, 65536]"),
    (_set("encoder", "dim", 64), "encoder.dim", "dim 256"),           # well-formed, but not the index's
    (_set("encoder", "hashing"), "encoder", "got string"),
    (_set("encoder", [1]), "encoder", "got list"),
    (_set("encoder", "name", 5), "encoder.name", "got integer 5"),
    (_set("shards", ["shard-000", "shard-000"]), "shards", "more than once"),
    (_set("format_version", 0), "format_version", ">= 1"),
    (_set("format_version", -1), "format_version", ">= 1"),
])
def test_damaged_marker(text_index, tmp_path, edit, field, why):
    index = _marker(text_index, tmp_path / "index", edit)
    with pytest.raises(CorruptIndexError) as e:
        Index(index)
    msg = str(e.value)
    assert "fastctx.json" in msg and f"field '{field}'" in msg and why in msg, msg
    problems = verify(index)
    assert len(problems) == 1 and "fastctx.json" in problems[0] and field in problems[0]
    out = cli_fails("verify", index)
    assert "FAIL" in out and "fastctx.json" in out
    assert "fastctx.json" in cli_fails("query", index, "ledger retry")


def test_damaged_marker_refuses_add(text_index, tmp_path):
    index = _marker(text_index, tmp_path / "index", _set("encoder", "dim", "x"))
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps(event(99, text="another ledger note")) + "\n")
    assert "encoder.dim" in cli_fails("add", index, more)


def test_verify_exit_status_end_to_end(text_index, tmp_path):
    """Through the installed console script: exit status 1, a FAIL line, no traceback."""
    index = _marker(text_index, tmp_path / "index", _set("encoder", "title_weight", "x"))
    res = subprocess.run([str(Path(sys.executable).parent / "fastctx"), "verify", str(index)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "FAIL" in res.stderr and "encoder.title_weight" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_sound_marker_and_newer_encoder_name(text_index, tmp_path):
    assert verify(text_index) == []
    # an encoder this version does not know still opens (an index of a newer fastctx); using it says so
    index = _marker(text_index, tmp_path / "index", _set("encoder", "name", "bert9"))
    idx = Index(index)
    assert idx.n == 6 and verify(index) == []
    with pytest.raises(EncoderError, match="unknown encoder 'bert9'"):
        _ = idx.encoder


# ------------------------------------------------------------------------------------ the one rule set
def test_record_problem_is_the_one_rule_set(tmp_path):
    assert record_problem({"name": "hashing-v1", "dim": 256}) is None            # markers before models
    assert record_problem({"name": "custom", "model": "m.C", "dim": 8, "normalize": None}) is None
    assert record_problem({"name": "hashing-v1", "dim": True}) == ("dim", "expected an integer in [8, 65536], "
                                                                         "got boolean true")
    assert record_problem({"name": "bert9"})[0] == "name"
    assert record_problem({"name": "bert9"}, unknown_ok=True) is None
    with pytest.raises(EncoderError, match="field 'bigram_weight'"):
        from_record({"name": "hashing-v1", "dim": 64, "bigram_weight": float("nan")})
    with pytest.raises(EncoderError, match="field 'dim'"):
        Index.create(tmp_path / "i", encoder={"name": "hashing-v1", "dim": "x"})
    assert not (tmp_path / "i").exists()
