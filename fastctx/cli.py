"""The `fastctx` command line: build, query, eval, stats, verify, demo."""
from __future__ import annotations

import datetime as dt
import json
import re
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Optional

import click
import numpy as np
from tqdm import tqdm

from .errors import FastctxError
from .ingest_git import MAX_FILES
from .shards.config import server_options

SAMPLE_CORPUS = Path(__file__).parent / "sample_corpus"


def _date(value: Optional[str], name: str) -> Optional[int]:
    """YYYY-MM-DD[THH:MM[:SS]] (UTC) or Unix seconds -> Unix seconds."""
    if value is None:
        return None
    if re.fullmatch(r"-?[0-9]{1,18}", value.strip()):   # ASCII digits only, within int64
        return int(value)
    try:
        d = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD) or Unix seconds", param_hint=name)
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    return int(d.timestamp())


def _tty() -> bool:
    """Progress bars only on a terminal: in a log or a pipe they are escape-code noise."""
    return sys.stderr.isatty()


class _Bars:
    """Progress callback (stage, done, total) -> one tqdm bar per stage, on stderr (a terminal)."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.bars = enabled and _tty(), {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=f"{stage:<9}", unit="ev", file=sys.stderr,
                                          leave=True, dynamic_ncols=True)
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _window(since: Optional[str], until: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """(time_from, time_to) of --since / --until; --since after --until is a typo, not a question."""
    lo, hi = _date(since, "--since"), _date(until, "--until")
    if lo is not None and hi is not None and lo > hi:
        raise click.BadParameter(f"{since!r} is after --until {until!r}", param_hint="--since")
    return lo, hi


def _fail(e: Exception) -> None:
    raise click.ClickException(str(e))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fastctx")
def main() -> None:
    """fastctx: causal-chain retrieval over organizational memory."""


_ENCODER_HELP = ("Text encoder for events without vectors: hashing (default, model-free), hashing:DIM or "
                 "sentence-transformers:NAME_OR_PATH (the st extra). Recorded in the index.")


def _corpus_arg(value: str):
    """CORPUS: '-' (stdin) or an existing folder / .jsonl / .parquet file."""
    if value != "-" and not Path(value).exists():
        raise click.BadParameter(f"{value!r} does not exist (a corpus folder, a .jsonl or .parquet file, or -)",
                                 param_hint="CORPUS")
    return value if value == "-" else Path(value)


@main.command()
@click.argument("corpus_dir", metavar="CORPUS", callback=lambda ctx, p, v: _corpus_arg(v))
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.option("--encoder", "encoder_spec", default=None, metavar="SPEC", help=_ENCODER_HELP)
@click.option("--overwrite", is_flag=True, help="Replace an existing index directory.")
@click.option("--threads", type=click.IntRange(1, 256), default=2, show_default=True, help="HNSW build threads.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--shards", type=click.IntRange(1, 4096), default=1, show_default=True,
              help="Partition into this many independently servable shards (by a hash of the event id).")
@click.option("--shard-key", default="id", show_default=True,
              help="What the partition hashes: id, source, kind or attr:NAME.")
@click.option("--ray", "ray_address", default=None, metavar="local|ADDRESS",
              help="Write the shards as Ray tasks: 'local' starts a local cluster, else join the cluster "
                   "at ADDRESS (needs the 'ray' extra).")
def build(corpus_dir, index_dir: Path, encoder_spec: Optional[str], overwrite: bool, threads: int, quiet: bool,
          shards: int, shard_key: str, ray_address: Optional[str]) -> None:
    """Build INDEX_DIR from CORPUS (atomically: all or nothing).

    CORPUS is an orgmem folder (vectors.npy and meta.json optional), a .jsonl file (one event per
    line), a .parquet file, or - for JSONL on stdin. Events without vectors are embedded from
    their text with --encoder."""
    from .index import build as build_index
    from .params import BuildParams
    bars = _Bars(not quiet)
    t0 = time.perf_counter()
    try:
        idx, report = build_index(corpus_dir, index_dir, overwrite=overwrite,
                                  params=BuildParams(threads=threads), progress=bars, shards=shards,
                                  shard_key=shard_key, encoder=encoder_spec, ray=ray_address)
    except FastctxError as e:
        bars.close()
        _fail(e)
    bars.close()
    s = idx.stats()   # entities and links from the report: summing shards would count shared ones twice
    click.echo(f"built {index_dir}: {s['events']} events, {report.new_entities} entities, {report.n_links} links, "
               f"{s['segments']} segment(s) in {time.perf_counter() - t0:.1f}s")
    if report.dangling_links:
        ex = ", ".join(f"{a} -> {b}" for a, b in report.dangling_examples)
        click.echo(f"note: dropped {report.dangling_links} link(s) to ids not in the corpus (e.g. {ex})")
    if report.actor_excess is not None and report.actor_excess < BuildParams.actor_min_excess:
        click.echo(f"note: no same-actor links: people's events fall within the hour of each other about "
                   f"as often as chance has them ({report.actor_excess:.2f} beyond chance, below "
                   f"{BuildParams.actor_min_excess})")


@main.command()
@click.argument("args", nargs=-1, required=True, metavar="[INDEX_DIR] CORPUS")
@click.option("--remote", default=None, metavar="HOST:PORT",
              help="Add through a coordinator server to its shards: `add --remote H:P CORPUS`.")
@click.option("--token", envvar="FASTCTX_TOKEN", default=None, help="With --remote: bearer token (or set FASTCTX_TOKEN).")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="With --remote: use TLS, trusting this CA (PEM).")
@click.option("--insecure", "remote_insecure", is_flag=True,
              help="Allow sending --token in plaintext to a non-loopback --remote.")
@click.option("--encoder", "encoder_spec", default=None, metavar="SPEC",
              help="The encoder the index was built with (checked; default: the recorded one).")
@click.option("--batch", "batch_size", type=click.IntRange(1, 10_000_000), default=1000, show_default=True,
              help="Events per durable batch (one log record, one fsync).")
@click.option("--flush/--no-flush", default=True, show_default=True,
              help="Turn the log into a segment at the end.")
def add(args, remote, token, ca, remote_insecure, encoder_spec: Optional[str], batch_size: int,
        flush: bool) -> None:
    """Append CORPUS's events to INDEX_DIR, durably, batch by batch.

    With --remote HOST:PORT the events go through a coordinator server to their owner shards'
    logs (each batch acked once every owner logged it), then one sync makes them visible; a
    shard down fails the add naming it, and running the same add again completes it.

    CORPUS is a folder, a .jsonl or .parquet file, or - (JSONL on stdin), as for build; events
    without vectors are embedded with the index's recorded encoder.

    Prints `acked <events written so far>` after each durable batch, with how many were updates
    and how many were already present. Idempotent: an event whose id and content are already in
    the index is skipped (so an interrupted add can be run again); a same-id event with different
    content replaces the old version."""
    from .index import Index
    from .sources import read_source, to_batch
    if len(args) != (1 if remote else 2):
        raise click.UsageError("expected INDEX_DIR CORPUS, or --remote HOST:PORT CORPUS")
    corpus_dir = _corpus_arg(args[-1])
    if remote:
        return _add_remote(remote, token, ca, remote_insecure, corpus_dir, batch_size)
    index_dir = Path(args[0])
    if not index_dir.is_dir():
        raise click.BadParameter(f"{index_dir}: no such directory", param_hint="INDEX_DIR")
    try:
        idx = Index(index_dir, writable=True, encoder=encoder_spec)
        src = read_source(corpus_dir)
        bars = _Bars()
        batch = to_batch(src, None if src.has_vectors else idx.encoder, progress=bars)
        bars.close()
        if batch.dim != idx.dim:
            raise FastctxError(f"{src.origin}: vectors of dim {batch.dim}, index dim {idx.dim}")
        n = len(batch)
        acked = updated = skipped = 0
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            r = idx.add(batch.select(np.arange(lo, hi)), on_existing="upsert")
            acked, updated, skipped = acked + r.n_events, updated + r.updated, skipped + r.skipped
            notes = [f"{updated} updated"] * bool(updated) + [f"{skipped} already present"] * bool(skipped)
            click.echo(f"acked {acked}" + (f" ({', '.join(notes)})" if notes else ""))
        if flush:
            idx.flush()
        idx.close()
    except FastctxError as e:
        _fail(e)


def _add_remote(remote, token, ca, insecure, corpus_dir, batch_size: int) -> None:
    """`add --remote`: `acked <n>` after each batch every owner shard logged, then the sync."""
    client = _connect(remote, token, ca, insecure)
    try:
        n = client.add(corpus_dir, batch=batch_size, progress=lambda _s, done, _t: click.echo(f"acked {done}"))
        click.echo(f"acked {n}, visible after sync")
    except FastctxError as e:
        _fail(e)
    finally:
        client.close()


@main.group()
def ingest() -> None:
    """Create or extend an index from data in other formats."""


@ingest.command("git")
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.option("--encoder", "encoder_spec", default=None, metavar="SPEC",
              help="Encoder of a new index (default hashing); an existing index uses the one it records.")
@click.option("--branch", default=None, metavar="REF", help="Commits reachable from this ref (default HEAD).")
@click.option("--max-commits", type=click.IntRange(1), default=None, help="Only the most recent N commits.")
@click.option("--max-files", type=click.IntRange(1), default=MAX_FILES, show_default=True,
              help="A commit touching more files names none of them as entities, only their directories.")
@click.option("--batch", "batch_size", type=click.IntRange(1, 1_000_000), default=1000, show_default=True,
              help="Commits per durable batch.")
@click.option("--skip-invalid", is_flag=True,
              help="Leave out, and list, commits the index cannot hold (a committer date after 2200) "
                   "instead of stopping before anything is written.")
def ingest_git_cmd(repo: Path, index_dir: Path, encoder_spec: Optional[str], branch: Optional[str],
                   max_commits: Optional[int], max_files: int, batch_size: int, skip_invalid: bool) -> None:
    """One event per non-merge commit of REPO (a clone or a bare repository) into INDEX_DIR,
    created if absent. Commits already in the index are skipped, so a re-run adds only new ones."""
    from .ingest_git import ingest_git
    bar = tqdm(desc="commits", unit="commit", file=sys.stderr) if sys.stderr.isatty() else None

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        r = ingest_git(repo, index_dir, encoder=encoder_spec, branch=branch, batch_size=batch_size,
                       max_commits=max_commits, max_files=max_files, skip_invalid=skip_invalid,
                       progress=progress if bar is not None else None)
    except FastctxError as e:
        _fail(e)
    finally:
        if bar is not None:
            bar.close()
    left_out = r["left_out"]
    click.echo(f"{index_dir}: {r['commits']} commits read, {r['added']} added, {r['updated']} updated, "
               f"{r['skipped']} already present; {r['links']} links"
               + (f"; {len(left_out)} left out (--skip-invalid):" if left_out else ""))
    for sha, why in left_out.items():
        click.echo(f"  {sha}: {why}")


def _print_answer(ans, width: int = 100) -> None:
    click.echo(ans.headline())
    for ev in ans.events:
        flag = ""
        if ev.superseded_by:
            flag = click.style(f"  [superseded by {ev.superseded_by}]", fg="yellow")
        if ans.current is not None and ev.id == ans.current.id:
            flag = click.style("  [CURRENT]", fg="green", bold=True)
        click.echo(click.style(f"{ev.date}  {ev.source:<10} {ev.kind:<18} {ev.id}", bold=True) +
                   f"  ({ev.tokens} tok, score {ev.score:.3f}){flag}")
        text = (ev.text or "").replace("\n", " ")
        if text:
            click.echo(textwrap.indent(textwrap.shorten(text, width=width - 6, placeholder=" ..."), "      "))
        if ev.why:
            click.echo(click.style(f"      why: {ev.why}", dim=True))
    t = ans.timings
    click.echo(click.style("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()), dim=True))


def _remote_options(fn):
    """--token/--ca/--insecure of commands that can ask a coordinator server (--remote)."""
    fn = click.option("--insecure", "remote_insecure", is_flag=True,
                      help="Allow sending --token in plaintext to a non-loopback --remote.")(fn)
    fn = click.option("--ca", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                      help="With --remote: use TLS, trusting this CA (PEM).")(fn)
    return click.option("--token", envvar="FASTCTX_TOKEN", default=None,
                        help="With --remote: bearer token (or set FASTCTX_TOKEN).")(fn)


def _answer_params(pairs: tuple, remote: Optional[str]):
    """AnswerParams from repeated --param KEY=VALUE (each converted to the knob's type)."""
    from dataclasses import fields, replace
    from .params import AnswerParams
    if not pairs:
        return AnswerParams()
    if remote:
        raise click.UsageError("--param sets the local engine's knobs; a coordinator server uses its own "
                               "(fastctx serve coordinator --param)")
    known = {f.name: f for f in fields(AnswerParams)}
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        f = known.get(key.strip())
        if not eq or f is None:
            raise click.BadParameter(f"{pair!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(known))}",
                                     param_hint="--param")
        kind = type(f.default)
        try:
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError("not a boolean")
                out[f.name] = value.lower() in ("true", "1")
            elif kind in (int, float, str):
                out[f.name] = kind(value)
            elif kind is tuple and all(isinstance(x, str) for x in f.default):
                out[f.name] = tuple(x.strip() for x in value.split(",") if x.strip())   # a,b,c; empty: none
            else:
                raise ValueError(f"{kind.__name__} knobs are set from Python")
        except ValueError as e:
            article = "an" if kind.__name__[0] in "aeiou" else "a"
            raise click.BadParameter(f"{pair!r}: {f.name} must be {article} {kind.__name__} ({e})",
                                     param_hint="--param") from None
    try:
        return replace(AnswerParams(), **out)
    except (ValueError, FastctxError) as e:
        raise click.BadParameter(str(e), param_hint="--param") from None


def _need_grpc(feature: str) -> None:
    """A clear error naming the extra when grpc is not installed (it is optional)."""
    from .extras import MissingExtraError, require
    try:
        require("grpc", "serve", feature)
        require("grpc_health.v1.health", "serve", feature)
    except MissingExtraError as e:
        _fail(e)


def _connect(remote: str, token, ca, insecure: bool):
    _need_grpc("--remote")
    from . import connect
    return connect(remote, token=token, ca=ca, insecure=insecure)


@main.command()
@click.argument("args", nargs=-1, required=True, metavar="[INDEX_DIR] TEXT")
@click.option("--remote", default=None, metavar="HOST:PORT",
              help="Ask a coordinator server instead of a local index: `query --remote H:P TEXT`.")
@_remote_options
@click.option("--principal", "principals", multiple=True,
              help="Who asks (repeatable); with --remote it narrows the token's principals.")
@click.option("--entity", "entities", multiple=True, help="Seed events must mention one of these entities.")
@click.option("--all-entity", "entities_all", multiple=True, help="Seed events must mention all of these.")
@click.option("--source", "sources", multiple=True)
@click.option("--kind", "kinds", multiple=True)
@click.option("--since", help="Window start (YYYY-MM-DD or Unix seconds).")
@click.option("--until", help="Window end (YYYY-MM-DD or Unix seconds).")
@click.option("--as-of", "as_of", help="Answer from what was known at this time.")
@click.option("--type", "qtype", type=click.Choice(["chain", "current", "as_of"]), default=None,
              help="Query type (default: chain, or as_of when --as-of is given).")
@click.option("--direction", type=click.Choice(["back", "forward", "both"]), default="back", show_default=True)
@click.option("--budget", type=click.IntRange(1, 10_000_000), default=4000, show_default=True, help="Token budget.")
@click.option("--scope-entity", "scope_entities", multiple=True,
              help="Every returned event must mention one of these (a tenant, a conversation): expansion never leaves it.")
@click.option("--unrestricted", is_flag=True, help="Local index with access lists: ask with unrestricted access.")
@click.option("--fill", is_flag=True, help="Pad the answer with further direct hits up to the budget.")
@click.option("--param", "answer_params", multiple=True, metavar="KEY=VALUE",
              help="Set an engine knob (fastctx.params.AnswerParams), e.g. --param specific_seeds=1024; repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "jsonl", "context"]), default=None,
              help="table (default): a readable timeline; json: the answer; jsonl: one event a line; "
                   "context: prompt-ready text within the budget.")
def query(args, remote, token, ca, remote_insecure, principals, entities, entities_all, sources, kinds, since,
          until, as_of, qtype, direction, budget, scope_entities, unrestricted, fill, answer_params, as_json,
          fmt) -> None:
    """Answer TEXT from INDEX_DIR (or from a coordinator server, --remote) as a readable timeline."""
    from .index import Index
    from .filters import Filters
    if len(args) != (1 if remote else 2):
        raise click.UsageError("expected INDEX_DIR TEXT, or --remote HOST:PORT TEXT")
    text = args[-1]
    fmt = _out_format(fmt, as_json)
    params = _answer_params(answer_params, remote)
    try:
        as_of_t = _date(as_of, "--as-of")
        f = Filters(*_window(since, until), entities_any=entities, entities_all=entities_all, sources=sources,
                    kinds=kinds)
        qtype = qtype or ("as_of" if as_of_t is not None else "chain")
        if remote:
            idx = _connect(remote, token, ca, remote_insecure)
        else:
            index_dir = Path(args[0])
            if not index_dir.is_dir():
                raise click.BadParameter(f"{index_dir}: no such directory", param_hint="INDEX_DIR")
            idx = Index(index_dir, answer_params=params)
            if len(idx.marker["shards"]) > 1:   # a partitioned index: the in-process coordinator
                _need_grpc("querying a partitioned index")
                from .shards import open_local
                idx = open_local(index_dir, params=params, replica=True)
        who = {"principals": list(principals)} if principals else {}
        if scope_entities:
            who["scope"] = {"entities_any": list(scope_entities)}
        if fill:
            who["fill"] = True
        if unrestricted and not remote:
            who["unrestricted"] = True
        ans = idx.query(text, type=qtype, filters=f, as_of=as_of_t, direction=direction, budget_tokens=budget, **who)
    except FastctxError as e:
        _fail(e)
    if fmt == "json":
        click.echo(json.dumps(ans.to_dict(), indent=1))
    elif fmt == "jsonl":
        for d in ans.to_list():
            click.echo(json.dumps(d, ensure_ascii=False))
    elif fmt == "context":
        click.echo(ans.to_context(), nl=False)
    else:
        _print_answer(ans)


@main.command("eval")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Results file (orgmem results format, one JSON line per query).")
@click.option("--remote", default=None, metavar="HOST:PORT",
              help="Ask a coordinator server instead of a local index: `eval --remote H:P CORPUS_DIR`.")
@_remote_options
@click.option("--unrestricted", is_flag=True,
              help="Local index with access lists: queries that name no principals see everything.")
@click.option("--fill", is_flag=True, help="Pad every answer with further direct hits up to its budget.")
@click.option("--param", "answer_params", multiple=True, metavar="KEY=VALUE",
              help="Set an engine knob (fastctx.params.AnswerParams), e.g. --param specific_seeds=1024; repeatable.")
@click.option("--quiet", is_flag=True)
def eval_cmd(paths: tuple, out: Path, remote: Optional[str], token, ca, remote_insecure: bool, unrestricted: bool,
             fill: bool, answer_params: tuple, quiet: bool) -> None:
    """Run every query of CORPUS_DIR/queries.jsonl against INDEX_DIR (never reads truth.jsonl).

    Usage: eval INDEX_DIR CORPUS_DIR --out R.jsonl, or eval --remote HOST:PORT CORPUS_DIR --out R.jsonl."""
    from .corpus import read_queries
    from .index import Index
    if len(paths) != (1 if remote else 2):
        raise click.UsageError("expected INDEX_DIR CORPUS_DIR, or --remote HOST:PORT CORPUS_DIR")
    corpus_dir = paths[-1]
    params = _answer_params(answer_params, remote)
    try:
        target, tmp = _result_paths(out)   # before any work: a bad --out fails at once
        if remote:
            idx = _connect(remote, token, ca, remote_insecure)
            dim = int(idx.stats()["dim"])
        else:
            idx = Index(paths[0], answer_params=params)
            dim = idx.dim
            if len(idx.marker["shards"]) > 1:   # a partitioned index: the in-process coordinator
                _need_grpc("querying a partitioned index")
                from .shards import open_local
                idx = open_local(paths[0], params=params, replica=True)
        queries, qvecs = read_queries(corpus_dir)
        if qvecs.shape[1] != dim:
            raise FastctxError(f"{corpus_dir / 'query_vectors.npy'}: dim {qvecs.shape[1]}, index dim {dim}")
        if hasattr(idx, "warm_up"):
            idx.warm_up()
        lat, lines = [], []
        for q, v in tqdm(list(zip(queries, qvecs)), desc="queries", disable=quiet or not _tty(), file=sys.stderr):
            t0 = time.perf_counter()
            try:
                ans = idx.query_spec(q, v, fill=fill, **({} if remote else {"unrestricted": unrestricted}))
            except FastctxError as e:
                raise FastctxError(f"{corpus_dir / 'queries.jsonl'}, query {q.get('qid')!r}: {e}") from None
            ms = 1e3 * (time.perf_counter() - t0)
            lat.append(ms)
            rec = {"qid": q["qid"], "events": [e.id for e in ans.events],
                   "current": ans.current.id if ans.current else None, "latency_ms": round(ms, 3)}
            if getattr(ans, "partial", False):
                rec.update(partial=True, missing_shards=list(ans.missing_shards))
            lines.append(json.dumps(rec) + "\n")
        _write_results(out, target, tmp, lines)
    except FastctxError as e:
        _fail(e)
    if not lat:
        click.echo(f"wrote {out}: 0 queries")
        return
    click.echo(f"wrote {out}: {len(lat)} queries, latency p50 {np.percentile(lat, 50):.2f} ms, "
               f"p99 {np.percentile(lat, 99):.2f} ms")


def _write_results(out: Path, target: Path, tmp: Path, lines: list) -> None:
    """All results or none: written beside the target, then moved over it."""
    try:
        with open(tmp, "w") as f:
            f.writelines(lines)
        tmp.replace(target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise FastctxError(f"--out {out}: {e.strerror or e}") from None


def _result_paths(out: Path) -> tuple[Path, Path]:
    """(the file to replace, the temporary file written beside it) for --out: a link is followed
    (its target gets the results, the link stays), and anything but a regular file is refused
    rather than replaced by one."""
    target = out.resolve() if out.is_symlink() else out
    if target.exists() and not target.is_file():
        raise FastctxError(f"--out {out}: not a regular file (results are written to a file, then moved into place)")
    if not target.parent.is_dir():
        raise FastctxError(f"--out {out}: folder {target.parent} does not exist")
    return target, target.with_name(target.name + ".tmp")


_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _tls_options(fn):
    """--tls-cert/--tls-key/--insecure, shared by both servers."""
    fn = click.option("--insecure", is_flag=True,
                      help="Allow plaintext on a non-loopback --host (without TLS a server binds loopback only).")(fn)
    fn = click.option("--tls-key", type=_FILE, default=None, help="PEM private key of --tls-cert.")(fn)
    return click.option("--tls-cert", type=_FILE, default=None, help="Serve TLS with this PEM certificate.")(fn)


def _limit_options(fn):
    return click.option("--max-concurrent", type=click.IntRange(1, 4096), default=16, show_default=True,
                        help="RPCs served at once; more are refused (RESOURCE_EXHAUSTED) instead of queued.")(fn)


@main.group()
def serve() -> None:
    """Serve a shard, or a coordinator over shard servers, over gRPC."""


@serve.command("shard")
@server_options
@click.option("--index", "index_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--shard", "shard_no", required=True, type=click.IntRange(0, 4095))
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="0: any free port.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--workers", type=click.IntRange(1, 256), default=8, show_default=True)
@_tls_options
@click.option("--tls-client-ca", type=_FILE, default=None,
              help="Require client certificates signed by this CA (mutual TLS; needs --tls-cert/--tls-key).")
@_limit_options
def serve_shard(index_dir: Path, shard_no: int, port: int, host: str, workers: int, tls_cert, tls_key,
                insecure: bool, tls_client_ca, max_concurrent: int, ops) -> None:
    """Serve shard K of a partitioned index (stages Search, Expand, Fetch, Stats + health)."""
    _need_grpc("fastctx serve shard")
    from .shards.server import ShardServer, serve_forever
    from .shards.wire import Limits
    try:
        srv = ShardServer(index_dir, shard_no, port=port, host=host, workers=workers, tls_cert=tls_cert,
                          tls_key=tls_key, tls_client_ca=tls_client_ca, insecure=insecure,
                          limits=Limits(max_concurrent=max_concurrent), **ops.server_kw())
    except (FastctxError, OSError) as e:
        _fail(e)
    tls = ("mutual TLS" if tls_client_ca else "TLS") if tls_cert else "plaintext"
    ops.announce(f"shard {shard_no} of {index_dir} ({tls}, build {srv.build}) serving on {srv.address}"
                 + _metrics_note(srv))
    serve_forever(srv)


def _shard_map(specs) -> dict:
    out = {}
    for spec in specs:
        k, sep, addrs = spec.partition("=")
        if not sep or not k.strip().isdigit() or not addrs:
            raise click.BadParameter(f"{spec!r}: expected K=host:port[,host:port...]", param_hint="--shard")
        out.setdefault(int(k), []).extend(a.strip() for a in addrs.split(",") if a.strip())
    return out


def _metrics_note(srv) -> str:
    return f", metrics on http://{srv.obs.metrics_address}/metrics" if srv.obs.metrics_address else ""


@serve.command("coordinator")
@server_options
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--shard", "shard_specs", multiple=True, required=True, metavar="K=HOST:PORT[,HOST:PORT]",
              help="A shard and its replicas; repeat for every shard.")
@click.option("--call-timeout", type=float, default=2.0, show_default=True, help="Seconds per shard call.")
@click.option("--hedge-ms", type=float, default=250.0, show_default=True,
              help="Send a slow call to another replica after this long (0: never).")
@click.option("--deadline", type=float, default=10.0, show_default=True, help="Default seconds per query.")
@click.option("--build-check", type=click.FloatRange(0), default=10.0, show_default=True,
              help="Seconds between checks that every shard replica serves the cluster's build (0: only at start).")
@click.option("--workers", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option("--param", "answer_params", multiple=True, metavar="KEY=VALUE",
              help="Set an engine knob for every query (fastctx.params.AnswerParams); repeatable.")
@click.option("--graph-replica", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              metavar="INDEX_DIR",
              help="Hold the graph of this partitioned index (the shards' directories, or a copy) and expand "
                   "chains here: no shard round per hop. Used while the shards serve the state it was read "
                   "from; reloaded when they change.")
@_tls_options
@click.option("--tokens", "tokens_file", type=_FILE, default=None,
              help="Require bearer tokens: a JSON object mapping each token to its list of principals.")
@click.option("--shard-ca", type=_FILE, default=None, help="Call the shards over TLS, trusting this CA.")
@click.option("--client-cert", type=_FILE, default=None, help="Client certificate for mutual-TLS shards.")
@click.option("--client-key", type=_FILE, default=None, help="PEM private key of --client-cert.")
@_limit_options
def serve_coordinator(port, host, shard_specs, call_timeout, hedge_ms, deadline, build_check, workers, answer_params,
                      graph_replica, tls_cert, tls_key, insecure, tokens_file, shard_ca, client_cert, client_key, max_concurrent,
                      ops) -> None:
    """Serve queries over shard servers (stateless: run several side by side)."""
    _need_grpc("fastctx serve coordinator")
    from .auth import channel_credentials
    from .shards.coordinator import Coordinator
    from .shards.server import CoordinatorServer, serve_forever
    from .shards.transport import remote_cluster
    from .shards.wire import Limits
    params = _answer_params(answer_params, None)
    try:
        creds = channel_credentials(shard_ca, client_cert, client_key) \
            if shard_ca or client_cert or client_key else None
        cluster = remote_cluster(_shard_map(shard_specs), call_timeout_s=call_timeout,
                                 hedge_s=hedge_ms / 1e3 if hedge_ms > 0 else None, credentials=creds)
        coord = Coordinator(cluster, params=params, deadline_s=deadline, replica=graph_replica)
        srv = CoordinatorServer(coord, port=port, host=host, workers=workers,
                                tls_cert=tls_cert, tls_key=tls_key, tokens=tokens_file, insecure=insecure,
                                limits=Limits(max_concurrent=max_concurrent), build_check_s=build_check or None,
                                **ops.server_kw())
    except (FastctxError, OSError) as e:
        _fail(e)
    auth = f", {len(srv.tokens)} token(s)" if srv.tokens is not None else ""
    rep = f", graph replica of {graph_replica}: {coord.replica.describe()}" if graph_replica else ""
    ops.announce(f"coordinator over {len(cluster.shards)} shard(s) ({'TLS' if tls_cert else 'plaintext'}{auth}{rep}) "
                 f"serving on {srv.address}" + _metrics_note(srv))
    serve_forever(srv)


@main.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def stats(index_dir: Path, as_json: bool) -> None:
    """Print what INDEX_DIR holds."""
    from .index import Index
    try:
        s = Index(index_dir).stats()
    except FastctxError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(s))
        return
    for k, v in s.items():
        if k in ("time_min", "time_max") and v is not None:
            v = f"{dt.datetime.fromtimestamp(v, dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
        click.echo(f"{k:<15} {v}")


@main.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def verify(index_dir: Path) -> None:
    """Check every checksum and structural invariant of INDEX_DIR."""
    from .index import verify as verify_index
    notes: list = []
    problems = verify_index(index_dir, notes)
    if problems:
        for p in problems:
            click.echo(f"FAIL {p}", err=True)
        sys.exit(1)
    for note in notes:   # what a crash may have left: shown, not a failure
        click.echo(f"note: {note}: an unfinished last write (a crash mid-write leaves one; the next "
                   "writer drops it)", err=True)
    click.echo(f"ok: {index_dir} passed every check")


# -- everyday commands: get, search, delete, compact, export -----------------------------------
_FORMATS = click.Choice(["table", "json", "jsonl"])


def _out_format(fmt: Optional[str], as_json: bool) -> str:
    if as_json and fmt not in (None, "json"):
        raise click.UsageError(f"--json and --format {fmt} disagree (--json means --format json)")
    return fmt or ("json" if as_json else "table")


def _open_index(index_dir: Path, writable: bool = False):
    from .index import Index
    return Index(index_dir, writable=writable)


def _short(text: Optional[str], width: int) -> str:
    return textwrap.shorten((text or "").replace("\n", " "), width=width, placeholder=" ...") if text else ""


def _who(principals, unrestricted: bool) -> dict:
    return {"principals": list(principals) if principals else None, "unrestricted": unrestricted}


def _view_options(fn):
    fn = click.option("--unrestricted", is_flag=True,
                      help="Read an index holding access lists without naming who asks (an operator's view).")(fn)
    return click.option("--principal", "principals", multiple=True, help="Who asks (repeatable).")(fn)


@main.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("ids", nargs=-1, required=True)
@click.option("--format", "fmt", type=_FORMATS, default=None, help="Output format (default table).")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@_view_options
def get(index_dir: Path, ids: tuple, fmt, as_json: bool, principals, unrestricted: bool) -> None:
    """Print the events with these IDs (exit 1 when one is absent, deleted or hidden)."""
    fmt = _out_format(fmt, as_json)
    try:
        events = _open_index(index_dir).get(list(ids), **_who(principals, unrestricted))
    except FastctxError as e:
        _fail(e)
    dicts = [e.to_dict() if e is not None else None for e in events]
    if fmt == "json":
        click.echo(json.dumps(dicts, indent=1, ensure_ascii=False))
    elif fmt == "jsonl":
        for d in dicts:
            click.echo(json.dumps(d, ensure_ascii=False))
    else:
        for i, e in zip(ids, events):
            if e is None:
                click.echo(click.style(f"{i}: not found", fg="red"))
                continue
            click.echo(click.style(f"{e.id}  {e.date}  {e.source}/{e.kind}  ({e.tokens} tok)", bold=True))
            for name, value in (("entities", ", ".join(e.entities)),
                                ("links", ", ".join(f"{ty} -> {to}" for to, ty in e.links)),
                                ("attrs", json.dumps(e.attrs, ensure_ascii=False) if e.attrs else "")):
                if value:
                    click.echo(f"  {name}: {value}")
            if e.text:
                click.echo(textwrap.indent(textwrap.fill(e.text, 96), "  "))
    missing = [i for i, e in zip(ids, events) if e is None]
    if missing:
        click.echo(f"not found: {', '.join(missing)}", err=True)
        sys.exit(1)


@main.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("text")
@click.option("-k", "k", type=click.IntRange(1, 10_000), default=10, show_default=True, help="How many hits.")
@click.option("--entity", "entities", multiple=True, help="Hits must mention one of these entities.")
@click.option("--all-entity", "entities_all", multiple=True, help="Hits must mention all of these.")
@click.option("--source", "sources", multiple=True)
@click.option("--kind", "kinds", multiple=True)
@click.option("--since", help="Window start (YYYY-MM-DD or Unix seconds).")
@click.option("--until", help="Window end (YYYY-MM-DD or Unix seconds).")
@click.option("--as-of", "as_of", help="Only events that existed at this time.")
@click.option("--format", "fmt", type=_FORMATS, default=None, help="Output format (default table).")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@_view_options
def search(index_dir: Path, text: str, k: int, entities, entities_all, sources, kinds, since, until, as_of, fmt,
           as_json: bool, principals, unrestricted: bool) -> None:
    """Plain filtered top-k: the K events most similar to TEXT (no chain expansion)."""
    from .filters import Filters
    fmt = _out_format(fmt, as_json)
    try:
        f = Filters(*_window(since, until), as_of=_date(as_of, "--as-of"), entities_any=entities,
                    entities_all=entities_all, sources=sources, kinds=kinds)
        hits = _open_index(index_dir).search(text, k=k, filters=f, **_who(principals, unrestricted))
        dicts = hits.to_list(0)
    except FastctxError as e:
        _fail(e)
    if fmt == "json":
        click.echo(json.dumps(dicts, indent=1, ensure_ascii=False))
    elif fmt == "jsonl":
        for d in dicts:
            click.echo(json.dumps(d, ensure_ascii=False))
    else:
        for rank, d in enumerate(dicts, 1):
            click.echo(click.style(f"{rank:>3}. {d['score']:.3f}  {d['date']}  {d['source']:<10} {d['kind']:<18} "
                                   f"{d['id']}", bold=True))
            if d["text"]:
                click.echo("      " + _short(d["text"], 94))
        if not dicts:
            click.echo("no hits")


@main.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("ids", nargs=-1, required=True)
def delete(index_dir: Path, ids: tuple) -> None:
    """Delete the events with these IDs, durably (hidden at once; compaction drops them)."""
    try:
        idx = _open_index(index_dir, writable=True)
        n = idx.delete(list(ids))
        idx.close()
    except FastctxError as e:
        _fail(e)
    asked = len(dict.fromkeys(ids))
    click.echo(f"deleted {n}" + (f" ({asked - n} not found)" if n < asked else ""))


@main.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Merge every segment, not only runs of small ones.")
def compact(index_dir: Path, force: bool) -> None:
    """Flush the log, then merge adjacent small segments (deleted and replaced rows go for good),
    and write the shard graph file of a shard of several segments when it is missing or stale."""
    try:
        idx = _open_index(index_dir, writable=True)
        before = idx.stats()
        idx.flush()
        runs = idx.compact(force=force)
        wrote = idx.write_graph()
        after = idx.stats()
        idx.close()
    except FastctxError as e:
        _fail(e)
    graph = f"; shard graph {'written' if wrote else 'up to date'}" if after["segments"] > 1 else ""
    click.echo(f"compacted {index_dir}: {len(runs)} merge(s), segments {before['segments']} -> {after['segments']}, "
               f"dropped {before['deleted_rows'] - after['deleted_rows']} deleted row(s); {after['events']} events"
               + graph)


@main.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace a non-empty OUT_DIR.")
def export(index_dir: Path, out_dir: Path, overwrite: bool) -> None:
    """Write INDEX_DIR's live events as an orgmem-v1 corpus folder (rebuild with `fastctx build`)."""
    from .export import export_corpus
    try:
        meta = export_corpus(_open_index(index_dir), out_dir, overwrite=overwrite)
    except FastctxError as e:
        _fail(e)
    click.echo(f"exported {meta['n_events']} events (dim {meta['dim']}) to {out_dir}")


@main.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to build the demo index (default: a temporary directory).")
@click.option("--question", default=None, help="Ask your own question of the sample corpus.")
def demo(workdir: Optional[Path], question: Optional[str]) -> None:
    """Build an index from the bundled sample corpus and answer a real question."""
    from .corpus import read_queries
    from .index import build as build_index
    with tempfile.TemporaryDirectory(prefix="fastctx-demo-") as tmp:
        target = (workdir or Path(tmp)) / "sample-index"
        click.echo(f"building {target} from the bundled sample corpus ({SAMPLE_CORPUS.name}) ...")
        idx, _ = build_index(SAMPLE_CORPUS, target, overwrite=True)
        s = idx.stats()
        click.echo(f"{s['events']} events, {s['entities']} entities, {s['links']} explicit links, "
                   f"{dt.datetime.fromtimestamp(s['time_min'], dt.timezone.utc):%Y-%m-%d} .. "
                   f"{dt.datetime.fromtimestamp(s['time_max'], dt.timezone.utc):%Y-%m-%d}\n")
        idx.warm_up()
        queries, _ = read_queries(SAMPLE_CORPUS)
        asks = [q for q in queries if q.get("text")]
        if question:
            asks = [{"qid": "you", "type": "chain", "text": question, "filters": {}, "as_of": None,
                     "direction": "back", "budget_tokens": 4000}]
        else:
            picked = {}
            for q in asks:
                picked.setdefault(q["type"], q)
            asks = list(picked.values())
        for q in asks:
            click.echo(click.style(f"Q ({q['type']}): {q['text']}", fg="cyan", bold=True))
            _print_answer(idx.query_spec(q))
            click.echo()
