"""The `fastctx` command line: build, query, eval, stats, verify, demo."""
from __future__ import annotations

import datetime as dt
import json
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

SAMPLE_CORPUS = Path(__file__).parent / "sample_corpus"


def _date(value: Optional[str], name: str) -> Optional[int]:
    """YYYY-MM-DD[THH:MM[:SS]] (UTC) or Unix seconds -> Unix seconds."""
    if value is None:
        return None
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        d = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD) or Unix seconds", param_hint=name)
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    return int(d.timestamp())


class _Bars:
    """Progress callback (stage, done, total) -> one tqdm bar per stage, on stderr."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.bars = enabled, {}

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


def _fail(e: Exception) -> None:
    raise click.ClickException(str(e))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fastctx")
def main() -> None:
    """fastctx: causal-chain retrieval over organizational memory."""


@main.command()
@click.argument("corpus_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace an existing index directory.")
@click.option("--threads", type=click.IntRange(1, 256), default=2, show_default=True, help="HNSW build threads.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def build(corpus_dir: Path, index_dir: Path, overwrite: bool, threads: int, quiet: bool) -> None:
    """Build INDEX_DIR from an orgmem-v1 CORPUS_DIR (atomically: all or nothing)."""
    from .index import build as build_index
    from .params import BuildParams
    bars = _Bars(not quiet)
    t0 = time.perf_counter()
    try:
        idx, report = build_index(corpus_dir, index_dir, overwrite=overwrite,
                                  params=BuildParams(threads=threads), progress=bars)
    except FastctxError as e:
        bars.close()
        _fail(e)
    bars.close()
    s = idx.stats()
    click.echo(f"built {index_dir}: {s['events']} events, {s['entities']} entities, {s['links']} links, "
               f"{s['segments']} segment(s) in {time.perf_counter() - t0:.1f}s")
    if report.dangling_links:
        ex = ", ".join(f"{a} -> {b}" for a, b in report.dangling_examples)
        click.echo(f"note: dropped {report.dangling_links} link(s) to ids not in the corpus (e.g. {ex})")


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


@main.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("text")
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
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
def query(index_dir, text, entities, entities_all, sources, kinds, since, until, as_of, qtype, direction,
          budget, as_json) -> None:
    """Answer TEXT from INDEX_DIR as a readable timeline."""
    from .index import Index
    from .filters import Filters
    try:
        idx = Index(index_dir)
        as_of_t = _date(as_of, "--as-of")
        f = Filters(time_from=_date(since, "--since"), time_to=_date(until, "--until"),
                    entities_any=entities, entities_all=entities_all, sources=sources, kinds=kinds)
        qtype = qtype or ("as_of" if as_of_t is not None else "chain")
        ans = idx.query(text, type=qtype, filters=f, as_of=as_of_t, direction=direction, budget_tokens=budget)
    except FastctxError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(ans.to_dict(), indent=1))
    else:
        _print_answer(ans)


@main.command("eval")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("corpus_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Results file (orgmem results format, one JSON line per query).")
@click.option("--quiet", is_flag=True)
def eval_cmd(index_dir: Path, corpus_dir: Path, out: Path, quiet: bool) -> None:
    """Run every query of CORPUS_DIR/queries.jsonl against INDEX_DIR (never reads truth.jsonl)."""
    from .corpus import read_queries
    from .index import Index
    try:
        idx = Index(index_dir)
        queries, qvecs = read_queries(corpus_dir)
        if qvecs.shape[1] != idx.dim:
            raise FastctxError(f"{corpus_dir / 'query_vectors.npy'}: dim {qvecs.shape[1]}, index dim {idx.dim}")
        idx.warm_up()
        lat = []
        tmp = out.with_name(out.name + ".tmp")
        with open(tmp, "w") as f:
            for q, v in tqdm(list(zip(queries, qvecs)), desc="queries", disable=quiet, file=sys.stderr):
                t0 = time.perf_counter()
                ans = idx.query_spec(q, v)
                ms = 1e3 * (time.perf_counter() - t0)
                lat.append(ms)
                f.write(json.dumps({"qid": q["qid"], "events": [e.id for e in ans.events],
                                    "current": ans.current.id if ans.current else None,
                                    "latency_ms": round(ms, 3)}) + "\n")
        tmp.replace(out)
    except FastctxError as e:
        _fail(e)
    click.echo(f"wrote {out}: {len(lat)} queries, latency p50 {np.percentile(lat, 50):.2f} ms, "
               f"p99 {np.percentile(lat, 99):.2f} ms")


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
    problems = verify_index(index_dir)
    if problems:
        for p in problems:
            click.echo(f"FAIL {p}", err=True)
        sys.exit(1)
    click.echo(f"ok: {index_dir} passed every check")


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
