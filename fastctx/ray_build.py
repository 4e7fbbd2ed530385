"""Partitioned builds on Ray: the same shards as `build(..., shards=N)`, written by Ray tasks.

`build_ray(corpus, index, shards=N, ray="local" | ADDRESS)` runs the in-process partitioned
build's own functions (`shard_of`, the shard writer's segment and sidecar functions) or Ray
tasks that give the same arrays, so the index answers exactly as the in-process build does:

* events without vectors are embedded by a pool of Ray actors running the encoder the build
  records (`embed_batch` rows per call; GPUs when `embed_gpus` > 0);
* the derived links (`similar`, `same_actor`, `co_mention`, `relands`) are Ray tasks over
  blocks of events in time order, each with the earlier events its rules look back at, and the
  corpus-wide counts `co_mention` weighs by summed from per-block counts first
  (fastctx/ray_links.py); the driver only concatenates the tasks' links, after one pass over
  the actors' mentions that decides whether same-actor links are derived at all
  (`derive.corpus_params`, as every build path decides);
* the whole-corpus pass gives `global_graph`'s arrays: its per-event inputs (derived entities,
  id and link keys, the entity vocabulary and frequencies) are partial aggregations over blocks
  of events in Ray tasks, merged exactly (fastctx/ray_graph.py); the global order, link
  resolution, link CSR, entity postings and supersession are Ray tasks over ranges of times,
  keys, ranks and entities, and one task per shard assembles that shard's `sidecar_arrays` from
  the ranges' pieces (fastctx/ray_order.py). The driver keeps the order and each event's shard;
* one Ray task per shard, given only its own events and its sidecar arrays, writes the files of
  `write_partition_shard` (segment, HNSW graph, sidecar) into a staging directory
  next to the index (``.NAME.raystage``) and then a completion marker holding a digest of the
  build's inputs. A re-run of the same build (after a crash or a failed task) keeps every shard
  whose marker matches and rebuilds only the others; other inputs discard the staging directory;
* the index is published atomically (`publish_dir`) once every shard is done.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from .errors import FastctxError, InvalidQueryError
from .params import BuildParams

DONE = "DONE.json"
STAGE_SUFFIX = ".raystage"


class RayClusterError(FastctxError, ConnectionError):
    """The Ray cluster named by `ray=` / --ray cannot be reached."""


def _check_reachable(address: str) -> None:
    """Fail fast on a HOST:PORT nobody listens on (ray.init would retry for minutes)."""
    import socket
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return   # "auto", ray:// client addresses: left to Ray
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise RayClusterError(f"cannot reach the Ray cluster at {address} ({e}); start one with "
                              "`ray start --head` or pass --ray local") from None


def _ray():
    from .extras import require
    return require("ray", "ray", "building on Ray (--ray)")


def _digest(batch, params: BuildParams, shards: int, key: str, encoder_spec) -> str:
    """Digest of everything a shard's files depend on (the whole corpus: sidecars are global)."""
    h = hashlib.blake2b(digest_size=16)
    for part in (json.dumps([shards, key, repr(params), encoder_spec], sort_keys=True, default=str),
                 "\0".join(batch.ids), "\0".join(batch.sources), "\0".join(batch.kinds),
                 "\0".join(batch.entity_names), "\0".join(batch.link_to),
                 "\0".join(t or "" for t in batch.texts), json.dumps(batch.attrs, sort_keys=True, default=str)):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\1")
    for arr in (batch.times, batch.tokens, batch.entity_ptr, batch.link_src, batch.link_type, batch.vectors):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _shard_done(shard_dir: Path, digest: str) -> bool:
    try:
        return json.loads((shard_dir / DONE).read_text()).get("digest") == digest
    except (OSError, ValueError):
        return False


def _write_shard(stage: str, name: str, sub, arrays: dict, k: int, shards: int, key: str, params: BuildParams,
                 encoder_spec, n_global: int, n_entities: int, digest: str, fault) -> str:
    """One shard, in a Ray task, from its own events (`sub`, in global-row order) and sidecar
    arrays: rebuild from scratch, then mark it done (marker last). The files are those of
    `partition.write_partition_shard` (`write_shard_files`: segment, HNSW graph, sidecar)."""
    from .partition import write_shard_files
    shard_dir = Path(stage) / name
    shutil.rmtree(shard_dir, ignore_errors=True)   # a half-written shard of a killed run
    write_shard_files(shard_dir, sub, arrays, k, shards, key, params, encoder_spec, n_global, n_entities)
    if fault is not None:
        fault(k)   # test hook: fail after the files, before the marker
    tmp = shard_dir / (DONE + ".part")
    tmp.write_text(json.dumps({"digest": digest, "shard": k}))
    os.replace(tmp, shard_dir / DONE)
    return name


class FailShards:
    """Fault hook for tests (`_fault=`): the task of each listed shard fails after writing its
    files and before marking them done, as a task killed at that point would."""

    def __init__(self, *shards: int):
        self.shards = set(shards)

    def __call__(self, k: int) -> None:
        if k in self.shards:
            raise RuntimeError(f"injected failure in shard {k}")


class _Embedder:
    """Ray actor state: the recorded encoder, created once per actor."""

    def __init__(self, spec: dict):
        from .encoder import from_record
        self.enc = from_record(spec)

    def __call__(self, rows: dict) -> dict:
        vec = np.asarray(self.enc.encode(list(rows["text"])), dtype=np.float32)
        return {"i": rows["i"], "vec": vec}


class _Precomputed:
    """An encoder that hands back vectors computed by the actors, in the order `embed` asks for
    them; any other text (the fallback for texts with no known words) goes to the real encoder."""

    def __init__(self, enc, texts: list, vectors: np.ndarray):
        self.enc, self.dim, self.texts, self.vectors, self.pos = enc, enc.dim, texts, vectors, 0

    def encode(self, texts):
        n = len(texts)
        if list(texts) == self.texts[self.pos:self.pos + n]:
            self.pos += n
            return self.vectors[self.pos - n:self.pos]
        return self.enc.encode(texts)


def embed_with_actors(texts: list, spec: dict, *, actors: int, batch_size: int, gpus: float) -> np.ndarray:
    """Vectors of `texts` by a pool of Ray actors running the encoder `spec` (a recorded spec)."""
    ray = _ray()
    ds = ray.data.from_items([{"i": i, "text": t or ""} for i, t in enumerate(texts)])
    out = ds.map_batches(_Embedder, fn_constructor_args=(spec,), batch_size=batch_size,
                         concurrency=max(1, actors), num_gpus=gpus or None, batch_format="numpy")
    vecs = np.empty((len(texts), int(spec["dim"])), np.float32)
    for b in out.iter_batches(batch_size=None, batch_format="numpy"):
        vecs[b["i"]] = b["vec"]
    return vecs


def _read_parquet(path: Path):
    """A Parquet file or folder of Parquet files read as a Ray dataset (blocks read by Ray tasks,
    in file order), then validated like any table (`sources._from_rows`)."""
    import pyarrow as pa

    from .sources import _from_rows
    ray = _ray()
    ctx = ray.data.DataContext.get_current()
    keep, ctx.execution_options.preserve_order = ctx.execution_options.preserve_order, True
    try:
        ds = ray.data.read_parquet(str(path))
        table = pa.concat_tables(ray.get(ds.to_arrow_refs()))
    except Exception as e:   # ArrowInvalid, OSError, Ray's wrappers of them
        from .errors import CorpusError
        raise CorpusError(f"not a readable Parquet input ({str(e)[:200]})", file=str(path)) from None
    finally:
        ctx.execution_options.preserve_order = keep
    return _from_rows(str(path), table.to_pylist())


def _read_blocks(path: Path):
    """A `Source` read in blocks by Ray tasks, for an orgmem folder with vectors or a JSONL file;
    None for other inputs. Two blocks per CPU of the cluster."""
    from .corpus import read_meta
    from .ray_read import read_folder_blocks, read_jsonl_blocks
    from .sources import JSONL_SUFFIXES, Source
    blocks = 2 * max(1, int(_ray().cluster_resources().get("CPU", 1)))
    if path.is_dir() and (path / "vectors.npy").exists():
        efile = str(path / "events.jsonl")
        return Source(str(path), batch=read_folder_blocks(path, blocks), meta=read_meta(path),
                      where=lambda k: (efile, k + 1))
    if path.is_file() and path.suffix.lower() in JSONL_SUFFIXES:
        cols = read_jsonl_blocks(path, blocks)
        return Source(str(path), cols=cols, where=lambda k, f=str(path): (f, k + 1))
    return None


def _is_parquet(corpus: Any) -> bool:
    from .sources import PARQUET_SUFFIXES
    p = Path(corpus)
    return p.suffix.lower() in PARQUET_SUFFIXES and p.exists() or \
        (p.is_dir() and not (p / "events.jsonl").exists() and any(p.glob("*.parquet")))


def read_with_ray(corpus: Any, index_dir: Path, overwrite: bool, progress, encoder: Any, *,
                  actors: int, batch_size: int, gpus: float):
    """`read_for_build`, with inputs read by Ray: Parquet as a Ray dataset, an orgmem folder's
    events.jsonl and a JSONL file in blocks parsed by Ray tasks (fastctx/ray_read.py, the same
    line-numbered validation), and the embedding of a source without vectors done by Ray actors.
    A text-only folder (no vectors.npy) and stdin go through the ordinary readers."""
    from .encoder import HashingEncoder, from_record, from_spec, spec_of
    from .index import _corpus_encoder, read_for_build
    from .sources import read_source, to_batch
    if isinstance(corpus, (str, Path)) and str(corpus) != "-":
        if index_dir.exists() and (not index_dir.is_dir() or any(index_dir.iterdir())) and not overwrite:
            return read_for_build(corpus, index_dir, overwrite, progress, encoder)   # raises IndexExistsError
        src = _read_blocks(Path(corpus)) or (_read_parquet(Path(corpus)) if _is_parquet(corpus)
                                             else read_source(corpus, progress=progress))
        if src.has_vectors and encoder is None:   # as read_for_build: record the corpus's encoder if it fits
            batch, recorded = to_batch(src), _corpus_encoder(src.meta)
            return batch, recorded if recorded and int(recorded.get("dim", batch.dim)) == batch.dim else None
        if not src.has_vectors and (encoder is None or isinstance(encoder, str)):
            recorded = _corpus_encoder(src.meta)
            enc = from_spec(encoder) if encoder is not None else (from_record(recorded) if recorded else HashingEncoder())
            spec = spec_of(enc)
            texts = list(src.cols["texts"])
            if all(t is not None and t.strip() for t in texts):   # else `embed` names the bad event
                vecs = embed_with_actors(texts, spec, actors=actors, batch_size=batch_size, gpus=gpus)
                enc = _Precomputed(enc, texts, vecs)
            return to_batch(src, enc, progress=progress), spec
    return read_for_build(corpus, index_dir, overwrite, progress, encoder)


def build_ray(corpus: Any, index_dir: Union[str, Path], *, shards: int, ray: str = "local",
              key: str = "id", overwrite: bool = False, params: BuildParams = BuildParams(),
              progress=None, encoder: Any = None, num_cpus: Optional[int] = None,
              embed_actors: int = 1, embed_batch: int = 256, embed_gpus: float = 0.0,
              _fault: Optional[Callable[[int], None]] = None):
    """Build `shards` shard directories with Ray (see the module doc). `ray` is "local" (start a
    local cluster for this call, `num_cpus` CPUs) or the address of a running cluster, whose
    nodes must all see the index's parent directory at the same path (shards are written there).
    Returns (Index, BuildReport), like `build`."""
    from .build import BuildReport
    from .format import publish_dir, write_marker
    from .index import LOCK_FILE, Index
    from .partition import MAX_SHARDS, shard_of
    from .ray_graph import ray_parts
    from .ray_order import ray_sidecars
    from .derive import corpus_params
    from .ray_links import ray_derived_links
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise InvalidQueryError(f"shards must be an integer in [1, {MAX_SHARDS}], got {shards!r}")
    if shards < 2:
        raise InvalidQueryError("a Ray build writes a partitioned index: pass shards >= 2 (--shards N); "
                                "one shard is built in process")
    if not isinstance(ray, str) or not ray:
        raise InvalidQueryError(f"ray must be 'local' or a cluster address, got {ray!r}")
    raym = _ray()
    index_dir = Path(index_dir)
    if ray != "local":
        _check_reachable(ray)
    started, lock = not raym.is_initialized(), None   # a session this process already opened is used as is
    if started:
        kw = {"num_cpus": num_cpus} if ray == "local" else {"address": ray}
        raym.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kw)
    try:
        batch, encoder_spec = read_with_ray(corpus, index_dir, overwrite, progress, encoder,
                                            actors=embed_actors, batch_size=embed_batch, gpus=embed_gpus)
        params, actor_excess = corpus_params(batch, params)                # same-actor links or none
        batch = ray_derived_links(batch, params)                           # links by Ray tasks
        parts = ray_parts(batch, params)                                   # per-event work in Ray tasks
        # each event's shard; for the id key, the ids' hashes are already in `parts` (shard_of's hash)
        shard_in = parts["id_keys"] % np.uint64(shards) if key == "id" else shard_of(batch, shards, key)
        g = ray_sidecars(batch, params, parts, shard_in.astype(np.int64), shards)   # sorts, joins: Ray tasks
        del parts, shard_in
        names = [f"shard-{k:03d}" for k in range(shards)]
        digest = _digest(batch, params, shards, key, encoder_spec)
        index_dir.parent.mkdir(parents=True, exist_ok=True)
        stage = index_dir.parent / f".{index_dir.name}{STAGE_SUFFIX}"
        lock = _stage_lock(stage)
        if stage.exists() and not _stage_matches(stage, digest):
            shutil.rmtree(stage)
        stage.mkdir(exist_ok=True)
        (stage / "STAGE.json").write_text(json.dumps({"digest": digest}))
        todo = [k for k, name in enumerate(names) if not _shard_done(stage / name, digest)]
        if todo:
            task = raym.remote(num_cpus=1)(_write_shard)
            pending = []
            for k in todo:   # each task gets its own events and its sidecar arrays (a ref from a task)
                sub = raym.put(batch.select(g["order"][g["shard_no"] == k]))
                pending.append(task.remote(str(stage), names[k], sub, g["sidecars"][k], k, shards, key, params,
                                           encoder_spec, g["n"], g["n_entities"], digest, _fault))
            raym.wait(pending, num_returns=len(pending))   # let every shard finish before a failure surfaces
            raym.get(pending)
        report = BuildReport(n_events=len(batch), n_links=g["n_links"], dangling_links=g["dangling"],
                             new_entities=g["n_entities"], actor_excess=actor_excess)
        for name in names:
            (stage / name / DONE).unlink()
        (stage / "STAGE.json").unlink()
        (stage / LOCK_FILE).touch()
        write_marker(stage, names, partition={"key": key, "shards": shards, "hash": "blake2b-64 mod N"},
                     **({"encoder": encoder_spec} if encoder_spec else {}))
        publish_dir(stage, index_dir)
        lock.release()
    finally:
        if lock is not None and lock.is_locked:
            lock.release()
        if started:
            raym.shutdown()
    return Index(index_dir), report


def _stage_lock(stage: Path):
    """Hold ``.NAME.raystage.lock``: two builds of one target must not share a staging directory."""
    from .format import os_file_lock
    return os_file_lock(Path(str(stage) + ".lock"), "another Ray build of this index is running")


def _stage_matches(stage: Path, digest: str) -> bool:
    try:
        return json.loads((stage / "STAGE.json").read_text()).get("digest") == digest
    except (OSError, ValueError):
        return False
