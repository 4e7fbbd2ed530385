"""The coordinator: the causal engine of fastctx/answer.py over shard servers.

`Coordinator.query()` runs `Engine.run` unchanged over a `DistributedGraph`, a per-query
`GraphAccess` whose calls become batched shard stages:

* seeds: ``Search`` on every shard at once, k-way merge by (score desc, global row asc): the
  one-shard tie-break, since global rows are the rows of a one-shard build;
* per-row attributes: ``Fetch`` grouped by owner shard (owners are learned with every row);
* expansion: one best-first search per candidate head, all advancing together in the Numba
  kernels of kernels/frontier.py (the node tables and heap of kernels/expand.py). A search that
  pops a row whose neighbours are not fetched yet waits; when all wait or are done, one *wave*
  fetches the neighbour lists of the waiting rows plus the best `prefetch` queued rows of every
  search: ``Expand`` on the owner shards (explicit links checked shard-side with their visit
  positions; the row's entities with global df and holder shards; the owner's part of each
  entity walk), then ``Expand`` on the other holder shards of those entities (their parts of
  the walks). `merge_wave` merges the walk parts by (time, global row) and replays the kernel's
  walk (nearest first, ties to the earlier side, max_per_entity eligible entries, hub window),
  so every neighbour gets the kernel's weight, order and edge-visit position, and budget cuts
  fall where the kernel's fall. Results equal the kernel's on a one-shard build.

With a graph replica (shards/replica.py: the whole index's graph, read from the shard
directories), the expansion is instead one call of the embedded kernel on the coordinator, while
every shard serves the state the replica was read from; seeds, attributes and payloads still come
from the shards.

The coordinator holds no index state but a cache of shard stats and, optionally, that read-only
replica, so several can run side by side behind a load balancer.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Optional, Sequence, Union

import numpy as np

from fastctx.answer import Answer, AnswerParams, Engine, check_query
from fastctx.csr import ranges
from fastctx.derive import query_words
from fastctx.encoder import from_record
from fastctx.errors import AccessDeniedError, InvalidQueryError, ShardUnavailableError
from fastctx.filters import Filters, spec_query
from fastctx.graph import DAY, link_weights
from fastctx.index import unit_query_rows
from fastctx.types import Event
from fastctx.kernels.frontier import merge_wave, searches_results, searches_run, searches_start
from fastctx.view import View

from .replica import GraphReplica
from .stores import NeighbourStore, Owners, ReachStore, Vectors, cat_ptr
from .transport import CallStats, Cluster

# payloads each shard sends with a current / as_of question's hits: the fact's versions and the
# events that mention it are among the first hits, so the answer usually needs no Fetch round
HIT_PAYLOADS = 16

log = logging.getLogger("fastctx.coordinator")


class DistributedGraph:
    """`GraphAccess` over a `Cluster` for one query (it caches what it learns)."""

    def __init__(self, coord: "Coordinator", deadline: float, require_all: bool = False):
        self.c, self.params, self.deadline, self.require_all = coord, coord.params, deadline, require_all
        self.cluster: Cluster = coord.cluster
        self.n = coord.n_global
        self.missing: set[int] = set()
        self.stats = CallStats()
        self.owner = Owners(self.n)
        self.vecs = Vectors(self.n, coord.dim)
        self.cache: dict[str, dict] = {f: {} for f in ("time", "tokens", "kind", "sup", "slot", "id", "rev",
                                                         "visible", "actors")}
        self.nbs: Optional[NeighbourStore] = None   # neighbour lists of the running expansion ...
        self._nbs: dict[tuple, NeighbourStore] = {}  # ... one store per walk (direction, window)
        self.rk: Optional[ReachStore] = None         # entity lists of reached rows
        self.names: dict[tuple[int, int], str] = {}   # (row, entity id) -> entity name
        self._hint: Optional[tuple] = None             # what the why-paths will ask (see _riders)
        self._payloads: dict[int, tuple] = {}           # row -> (payload, superseded_by, at)
        self.n_ent = int(coord.shard_stats()["n_entities_global"]) + 1
        # rows per Expand reply whose entity lists come back (0: two rounds per wave); off when
        # a (row, entity) key could overflow int64
        self.reach = int(coord.reach) if self.n * self.n_ent < (1 << 62) else 0
        self.rounds = 0                                # Expand rounds (a wave is one or two)
        self.waves = 0
        p = self.params
        if p.expansion != "best_first":
            raise InvalidQueryError(f"the coordinator runs expansion='best_first' only, got {p.expansion!r}")
        self.lw64 = link_weights(p).astype(np.float64)
        self.ts = float(p.time_scale_days * DAY)
        self.view = View()
        self.vmsg: Optional[dict] = None   # the view on the wire (None: unrestricted)
        self.text: Optional[str] = None    # the query's text and type (what the seed round asks)
        self.qtype = "chain"
        self._lex: Optional[tuple] = None  # lexical seeds answered by the seed round
        self.states: dict[int, str] = {}   # the state each shard served this query's seeds from
        self.on_replica = False            # whether the expansion ran on the coordinator's replica
        # the graph replica, when every shard served this query's seeds from the replica's state:
        # the rows' vectors and attributes are then read from its files, every Fetch through its
        # in-process shard services (`_scatter`)
        self.rep: Optional[GraphReplica] = None
        self._rep_checked = False
        self._allowed: Optional[tuple] = None   # (k, filters, rows allowed) of the last Search round

    def for_view(self, view: View) -> "DistributedGraph":
        """One graph per query: the view travels with every shard request; shards never send
        what it hides, and link targets are checked before they are walked."""
        self.view = view
        self.vmsg = view.to_msg() if view.restricts else None
        return self

    def _with_view(self, req: dict) -> dict:
        if self.vmsg is not None:
            req["view"] = self.vmsg
        return req

    def visible(self, rows) -> np.ndarray:
        rows = [int(r) for r in rows]
        if self.vmsg is None:
            return np.ones(len(rows), bool)
        return np.asarray(self._get("visible", rows, 0), bool)

    # -- transport -----------------------------------------------------------------------------
    def _scatter(self, method: str, reqs: dict[int, dict]) -> dict[int, dict]:
        reqs = {k: r for k, r in reqs.items() if k not in self.missing}
        if not reqs:
            return {}
        # on a replica of the state every shard serves (known once the question's first Search
        # round has answered), all that follows is read from the same files in this process, by
        # the servers' own code: fetches, and the searches after the seeds (the centred second
        # search, the chain's people's). No round trip; the seeds stay the shards' work
        local = method in ("Fetch", "Search") and self.rep is not None
        cluster = self.rep.local if local else self.cluster
        res, failed = cluster.scatter(method, reqs, self.deadline, CallStats() if local else self.stats)
        if failed:
            self.missing |= failed
            if self.require_all:
                raise ShardUnavailableError(f"shard(s) {sorted(self.missing)} did not answer "
                                            f"(every replica failed or timed out)" + set_aside(cluster, self.missing))
        return res

    def _by_owner(self, rows) -> dict[int, np.ndarray]:
        """Rows grouped by owner shard, each group in the order given."""
        rows = np.asarray(rows, np.int64)
        own = self.owner.of(rows)
        if len(rows) and own.min() < 0:
            raise KeyError(int(rows[np.argmin(own)]))
        return {int(k): rows[own == k] for k in np.unique(own).tolist()}

    def _fetch(self, rows: Sequence[int], fields: list[str], extra: Optional[dict] = None) -> None:
        """Fill the caches of `fields` for `rows` (one Fetch per owner shard)."""
        rows = set(map(int, rows))
        need = set()
        for f in fields:
            if f == "vector":
                need.update(self.vecs.missing(np.fromiter(rows, np.int64, len(rows))).tolist())
            else:
                need.update(rows.difference(self.cache[f].keys()))
        need = sorted(need)
        if not need and not ("vector" in fields and self._hint is not None):
            return
        groups = self._by_owner(need)
        reqs = {k: self._with_view({"rows": np.asarray(v, np.int64), "fields": fields}) for k, v in groups.items()}
        riders = self._riders(reqs, fields) if "vector" in fields else {}
        res = self._scatter("Fetch", reqs)
        for k, (ids, names) in riders.items():
            out = res.get(k) or {}
            self.cache["id"].update(zip(ids.tolist(), out.get("also_ids", [])))
            for r, e, nm in zip(names[0].tolist(), names[1].tolist(), out.get("also_names", [])):
                self.names[(r, e)] = nm if nm is not None else f"entity#{e}"
        for k, v in groups.items():
            out, v = res.get(k), v.tolist()
            if out is None:
                continue
            for f in fields:
                if f == "sup":
                    for r, b, a, s in zip(v, out["sup_by"].tolist(), out["sup_at"].tolist(),
                                          out["sup_shard"].tolist()):
                        self.cache["sup"][r] = (b, a)
                        if b >= 0:
                            self.owner[b] = s
                elif f == "rev":
                    self._store_rev(v, out, "")
                elif f == "vector":
                    self.vecs.put(np.asarray(v, np.int64), out["vector"])
                elif f == "kind":
                    self._store_kinds(v, out["kind"], out["kind_names"])
                elif f == "actors":
                    self._store_actors(v, out["actors_ptr"], out["actors"], out["actors_df"])
                else:
                    vals = out[f]
                    vals = vals.tolist() if isinstance(vals, np.ndarray) else vals
                    for r, x in zip(v, vals):
                        self.cache[f][r] = x

    def _store_rev(self, rows: list, out: dict, prefix: str, keep=None) -> None:
        """Cache the rows each of `rows` superseded (a Fetch reply's `rev_*` fields, or a Search
        reply's `hit_rev_*`), with their times, owners and superseder; `keep`: which of `rows`."""
        ptr = np.asarray(out[prefix + "rev_ptr"], np.int64)
        sel = np.ones(len(rows), bool) if keep is None else np.asarray(keep, bool)
        some = ptr[1:] > ptr[:-1]                 # most rows replaced nothing
        rev = self.cache["rev"]
        rev.update((r, []) for r in np.asarray(rows, np.int64)[sel & ~some].tolist())
        take = sel & some
        if not take.any():
            return
        rr, rt = out[prefix + "rev_rows"].tolist(), out[prefix + "rev_time"].tolist()
        rs, ra = out[prefix + "rev_shard"].tolist(), out[prefix + "rev_at"].tolist()
        for j in np.flatnonzero(take).tolist():
            r = int(rows[j])
            lst = []
            for x in range(int(ptr[j]), int(ptr[j + 1])):
                lst.append(rr[x])
                self.owner[rr[x]] = rs[x]
                self.cache["time"][rr[x]] = rt[x]
                self.cache["sup"][rr[x]] = (r, ra[x])
            rev[r] = lst

    def _store_actors(self, rows: list, ptr, ids, df, keep=None) -> None:
        """Cache each row's actor entities and their document frequencies (a reply's CSR
        `actors_ptr` / `actors` / `actors_df`); `keep`: which of `rows`."""
        ptr, ids, df = np.asarray(ptr, np.int64), np.asarray(ids, np.int64), np.asarray(df, np.int64)
        if (len(ptr) != len(rows) + 1 or (len(ptr) and (ptr[0] != 0 or int(ptr[-1]) != len(ids)))
                or len(df) != len(ids) or (np.diff(ptr) < 0).any()):
            raise ShardUnavailableError(f"a shard answered malformed actor lists for {len(rows)} rows")
        sel = range(len(rows)) if keep is None else np.flatnonzero(keep).tolist()
        self.cache["actors"].update((int(rows[j]), (ids[ptr[j]:ptr[j + 1]], df[ptr[j]:ptr[j + 1]])) for j in sel)

    def _store_kinds(self, rows: list, codes, names: list) -> None:
        """Cache kind names from a shard's reply: an index per row into the names it sent."""
        codes = np.asarray(codes, np.int64)
        if len(codes) and (int(codes.max()) >= len(names) or int(codes.min()) < 0):
            raise ShardUnavailableError(f"a shard answered a kind index outside the {len(names)} kind names it sent")
        self.cache["kind"].update(zip(rows, [names[c] for c in codes.tolist()]))

    def _row_fields(self) -> list[str]:
        """What a chain question reads of a hit or a reached row: its vector, time and budget, its
        kind when the engine weighs the asked kind, its actors when it weighs a chain's own people
        or keeps weak evidence by them (one fetch for all of them)."""
        p = self.params
        return (["vector", "time", "tokens"] + (["kind"] if p.kind_weight > 0 else [])
                + (["actors"] if p.actor_coherence > 0 or p.people_floor > 0 else []))

    def _riders(self, reqs: dict, fields: list) -> dict:
        """Add to a chain's vector fetch (`heads.chain_relevance`, right after the expansion) the ids
        of the expansion's parents and the names of the entities its paths went through: the
        why-paths ask for them next, so they ride along instead of taking two rounds."""
        hint, self._hint = self._hint, None
        if hint is None:
            return {}
        par, pr, pe = hint
        par = np.array([r for r in par.tolist() if r not in self.cache["id"]], np.int64)
        new = [(r, e) for r, e in zip(pr.tolist(), pe.tolist()) if (r, e) not in self.names]
        pr, pe = np.array([r for r, _ in new], np.int64), np.array([e for _, e in new], np.int64)
        o_par, o_pr = self.owner.of(par), self.owner.of(pr)
        riders = {}
        for k in np.unique(np.concatenate([o_par, o_pr])).tolist():
            if k < 0 or k in self.missing:
                continue
            ids, m = par[o_par == k], o_pr == k
            req = reqs.setdefault(k, self._with_view({"rows": np.zeros(0, np.int64), "fields": fields}))
            req.update({"also_ids": ids, "also_names": pr[m], "also_entities": pe[m]})
            riders[k] = (ids, (pr[m], pe[m]))
        return riders

    def _get(self, field: str, rows, default):
        rows = [int(r) for r in rows]
        self._fetch(rows, [field])
        c = self.cache.setdefault(field, {})
        return [c.get(r, default) for r in rows]

    # -- GraphAccess ---------------------------------------------------------------------------
    def seeds(self, q, k, filters: Filters):
        """One Search round: the vector hits, the lexical hits of the query's words (asked by
        `lexical` next) and what the query reads of each shard's first hits next (about its share
        of the global top k plus a margin; hits past it are fetched when read): a chain's vectors
        and times, a current / as_of question's grouping attributes and its first hits' payloads;
        none of these when a graph replica reads them."""
        req = self._with_view({"vectors": np.asarray(q, np.float32)[None, :], "k": int(k), "filters": filters.to_dict(),
                               "as_of": filters.as_of})
        names = query_words(self.text)
        if names:
            req.update(self._lexical_req(names, self.params.lexical_k))
            req["lex_k"] = req.pop("k")
            req["k"] = int(k)
        n_sh = len(self.cluster.shards)
        # each shard's share of the merged top k plus a margin (the rest is fetched when read)
        req["hit_rows"] = min(int(k), -(-5 * int(k) // (4 * n_sh)) + 16) if n_sh > 1 else int(k)
        # what the query type reads of every hit next: a chain query its head choice (vectors,
        # times) and budget (tokens); current/as_of its grouping (slot entity, supersession) and
        # the versions a winner replaced (rev), which would otherwise take a round of their own
        req["hit_fields"] = self._row_fields() if self.qtype == "chain" else ["slot", "sup", "tokens", "rev"]
        if self.c.replica is not None:
            # a coordinator with a graph replica reads what follows the seeds from the shards' files
            # itself: nothing rides along (should a shard serve another state, it is fetched when read)
            del req["hit_rows"], req["hit_fields"]
        elif self.qtype != "chain":
            # the grouping's attributes are the shards' work, in parallel, and the first hits'
            # payloads (the fact's versions) ride along
            req["hit_payloads"] = min(HIT_PAYLOADS, req["hit_rows"])
        elif self.reach:   # the candidates' entities: their first wave asks owners and holders at once
            p = self.params
            req["reach"] = req["hit_rows"]
            req["entity_params"] = {"entity_weight": float(p.entity_weight), "entity_max_df": int(p.entity_max_df),
                                    "entity_max_share": float(p.entity_max_share),
                                    "term_weight": float(p.term_weight), "max_per_entity": int(p.max_per_entity)}
        res = self._scatter("Search", {s: req for s in self.cluster.shards})
        self.states = {s: out.get("state") for s, out in res.items()}
        self._allowed = (int(k), filters, sum(int(out.get("n_allowed", 0)) for out in res.values()))
        self._replica()
        self._learn_reach(res)
        parts, top, rows, sims = self._merge_top(res, 0, k)
        kept = np.zeros(sum(c for _, c, _ in parts), bool)
        kept[top] = True
        pos = 0
        for s, c, out in parts:
            m = min(int(req.get("hit_rows", 0)), c)
            hit = out["rows"][0, :m]
            mine = kept[pos:pos + m]
            pos += c
            rows_m = hit[mine].tolist()
            for f in req.get("hit_fields", ()):
                if f == "rev" and "hit_rev_ptr" in out:
                    self._store_rev(hit.tolist(), out, "hit_", mine)
                elif f == "vector" and "hit_vector" in out:
                    self.vecs.put(hit[mine], out["hit_vector"][mine])
                elif f == "kind" and "hit_kind" in out:
                    self._store_kinds(rows_m, out["hit_kind"][mine], out["hit_kind_names"])
                elif f == "actors" and "hit_actors_ptr" in out:
                    self._store_actors(hit.tolist(), out["hit_actors_ptr"], out["hit_actors"], out["hit_actors_df"], mine)
                elif f == "sup" and "hit_sup_by" in out:
                    by, at, sh = (out[x][mine].tolist() for x in ("hit_sup_by", "hit_sup_at", "hit_sup_shard"))
                    self.cache["sup"].update(zip(rows_m, zip(by, at)))
                    for b, k2 in zip(by, sh):
                        if b >= 0:
                            self.owner[b] = k2
                elif "hit_" + f in out:
                    self.cache[f].update(zip(rows_m, out["hit_" + f][mine].tolist()))
            if "hit_payload" in out:
                self._store_payloads(hit, mine, out["hit_payload_at"], out["hit_payload"])
        if names:
            self._lex = (list(names), self.params.lexical_k, filters,
                         self._merge_lexical({s: {"rows": out["lex_rows"], "scores": out["lex_scores"]}
                                              for s, out in res.items() if "lex_rows" in out},
                                             self.params.lexical_k))
        return rows, sims

    def seeds_per_entity(self, q, k, filters: Filters, names):
        """One Search round: each shard searches once per name (its filters narrowed to rows that
        also mention it); each name's hits merged as `seeds` merges them."""
        names = list(names)
        if not names:
            return []
        req = self._with_view({"vectors": np.asarray(q, np.float32)[None, :], "k": int(k),
                               "filters": filters.to_dict(), "as_of": filters.as_of, "per_entity": names})
        res = self._scatter("Search", {s: req for s in self.cluster.shards})
        for s, r in res.items():
            rows, scores, counts = (np.asarray(r.get(f, ())) for f in ("rows", "scores", "counts"))
            if rows.ndim != 2 or rows.shape != scores.shape or len(rows) != len(names) \
                    or counts.shape != (len(names),) or (counts < 0).any() or (counts > rows.shape[1]).any():
                raise ShardUnavailableError(f"shard {s}'s per-entity Search reply does not match its request")
        return [self._merge_top(res, i, k)[2:] for i in range(len(names))]

    def _merge_top(self, res: dict, i: int, k: int):
        """Query `i` of every shard's Search reply merged into the top k: best score first, then
        lower row, then lower shard. Returns (parts (shard, count, reply) in concatenation order,
        the chosen positions among the concatenated hits, rows, similarities); owners recorded."""
        parts = [(s, int(out["counts"][i]), out) for s, out in res.items()]
        c_rows = np.concatenate([np.asarray(out["rows"][i, :c], np.int64) for s, c, out in parts]
                                or [np.zeros(0, np.int64)])
        c_scores = np.concatenate([np.asarray(out["scores"][i, :c], np.float32) for s, c, out in parts]
                                  or [np.zeros(0, np.float32)])
        c_shards = np.concatenate([np.full(c, s, np.int64) for s, c, out in parts] or [np.zeros(0, np.int64)])
        self._in_range(c_rows)
        top = np.lexsort((c_shards, c_rows, -c_scores.astype(np.float64)))[:k]
        self.owner.set_many(c_rows[top], c_shards[top])
        return parts, top, c_rows[top], c_scores[top].astype(np.float64)

    def allowed_count(self, k, filters: Filters):
        """From the last Search round with these filters (its shards' planner counts)."""
        last = self._allowed
        return last[2] if last is not None and last[0] == int(k) and last[1] is filters else None

    def _store_payloads(self, hit: np.ndarray, kept: np.ndarray, at, payloads) -> None:
        """Keep the payloads a Search reply sent for hits (positions `at` among them) of the
        merged top k, as `events` would have fetched them: with their superseder (`hit_sup_*`)."""
        at = np.asarray(at, np.int64)
        if len(at) != len(payloads) or (len(at) and (at.min() < 0 or at.max() >= len(hit))):
            raise ShardUnavailableError("a shard's hit payloads do not match its hits")
        sup = self.cache["sup"]
        for r, keep, pl in zip(hit[at].tolist(), kept[at].tolist(), payloads):
            if keep and pl is not None and r in sup:
                self._payloads[r] = (pl, *sup[r])
                self.cache["id"][r] = pl["id"]
                self.cache["visible"][r] = 1

    def _lexical_req(self, names, k) -> dict:
        st = self.c.shard_stats()
        avg = sum(int(v.get("doc_len_sum", 0)) for v in st["shards"].values()) / max(self.n, 1)
        p = self.params
        return {"words": list(names), "k": int(k), "avg_len": float(avg),
                "bm25": np.array([p.bm25_k1, p.bm25_b], np.float64)}

    def _merge_lexical(self, res: dict, k: int):
        cand = []
        for s, out in res.items():
            for r, sc in zip(out["rows"].tolist(), out["scores"].tolist()):
                cand.append((-sc, r, s))
        cand.sort()
        cand = cand[:k]
        for _, r, s in cand:
            self.owner[r] = s
        return np.array([r for _, r, _ in cand], np.int64), np.array([-sc for sc, _, _ in cand], np.float64)

    def lexical(self, names, k, filters: Filters):
        """Lexical seeds: each shard scores its own postings with the corpus-wide df. Usually
        answered by the seed round already (same words, k and filters)."""
        if self._lex is not None and self._lex[:3] == (list(names), int(k), filters):
            return self._lex[3]
        req = self._with_view({**self._lexical_req(names, k), "filters": filters.to_dict(), "as_of": filters.as_of})
        return self._merge_lexical(self._scatter("Search", {s: req for s in self.cluster.shards}), int(k))

    def times(self, rows):
        if self.rep is not None:
            return self.rep.times[np.asarray(rows, np.int64)]
        return np.asarray(self._get("time", rows, 0), np.int64)

    def kinds(self, rows):
        if self.rep is not None:
            return self.rep.kinds(rows)
        return np.asarray(self._get("kind", rows, ""), object)

    def tokens(self, rows):
        if self.rep is not None:
            return self.rep.tokens(rows)
        # rows of a missing shard never fit a budget
        return np.asarray(self._get("tokens", rows, np.iinfo(np.int64).max // 4), np.int64)

    def vectors(self, rows):
        rows = np.asarray(rows, np.int64)
        if self.rep is not None:
            return self.rep.vectors(rows)
        self._fetch(rows.tolist(), self._row_fields())   # with what the answer reads of them next
        return self.vecs.get(rows)   # zeros for rows of a missing shard

    def supersession(self, rows):
        if self.rep is not None:
            return self.rep.supersession(rows)
        got = self._get("sup", rows, (-1, -1))
        by = np.array([b if b < 0 or self.owner.get(b) not in self.missing else -1 for b, _ in got], np.int64)
        return by, np.array([a for _, a in got], np.int64)

    def superseded(self, rows):
        if self.rep is not None:
            return self.rep.superseded(rows, self.view)
        out = [[x for x in lst if self.owner.get(x) not in self.missing] for lst in self._get("rev", rows, [])]
        if self.vmsg is not None:
            flat = sorted({x for lst in out for x in lst})
            ok = dict(zip(flat, self.visible(flat).tolist()))
            out = [[x for x in lst if ok[x]] for lst in out]
        return out

    def slot_entity(self, rows):
        if self.rep is not None:
            return self.rep.slot_entity(rows)
        return np.asarray(self._get("slot", rows, -1), np.int64)

    def actors(self, rows):
        if self.rep is not None:
            return self.rep.actors(rows)
        none = (np.zeros(0, np.int64), np.zeros(0, np.int64))      # rows of a missing shard
        lists = self._get("actors", rows, none)
        ptr = np.zeros(len(lists) + 1, np.int64)
        np.cumsum([len(ids) for ids, _ in lists], out=ptr[1:])
        ids = np.concatenate([ids for ids, _ in lists] + [none[0]]).astype(np.int64)
        df = np.concatenate([df for _, df in lists] + [none[1]]).astype(np.int64)
        return ptr, ids, df / max(self.n, 1)

    def ids(self, rows):
        if self.rep is not None:    # read from the shards' files in this process, no Fetch round
            return self.rep.ids(rows)
        return self._get("id", rows, "?")

    def entity_names(self, pairs):
        if self.rep is not None:
            return [nm if nm is not None else f"entity#{e}" for nm, (_, e) in zip(self.rep.entity_names(pairs), pairs)]
        groups: dict[int, list[tuple[int, int]]] = {}
        for r, e in pairs:
            if (r, e) not in self.names:
                groups.setdefault(self.owner[r], []).append((r, e))
        if not groups:
            return [self.names[(r, e)] for r, e in pairs]
        res = self._scatter("Fetch", {k: {"rows": np.array([r for r, _ in v], np.int64), "fields": ["entity_names"],
                                          "entities": np.array([e for _, e in v], np.int64)}
                                      for k, v in groups.items()})
        names = self.names
        for k, v in groups.items():
            for (r, e), nm in zip(v, (res.get(k) or {}).get("entity_names", [None] * len(v))):
                names[(r, e)] = nm if nm is not None else f"entity#{e}"
        return [names[(r, e)] for r, e in pairs]

    def events(self, rows, scores, as_of):
        rows = [int(r) for r in rows]
        got = self._payloads   # payloads fetched earlier in this query (the current version is asked twice)
        groups = self._by_owner([r for r in rows if r not in got])
        reqs = {k: self._with_view({"rows": np.asarray(v, np.int64), "fields": ["payload", "sup"]})
                for k, v in groups.items()}
        if self.vmsg is None:   # ids of the superseders known already ride along (named in the answer)
            sup = sorted({b for r in rows for b, a in [self.cache["sup"].get(r, (-1, -1))]
                          if b >= 0 and b not in self.cache["id"] and (as_of is None or a <= as_of)})
            for k, v in (self._by_owner(sup).items() if sup else ()):
                if k not in self.missing:
                    reqs.setdefault(k, {"rows": np.zeros(0, np.int64), "fields": ["sup"]})["also_ids"] = v
        res = self._scatter("Fetch", reqs) if reqs else {}
        for k, r in reqs.items():
            if "also_ids" in r and k in res:
                self.cache["id"].update(zip(r["also_ids"].tolist(), res[k]["also_ids"]))
        for k, v in groups.items():
            out, v = res.get(k), v.tolist()
            if out is None:
                continue
            for j, r in enumerate(v):
                b, a, s = int(out["sup_by"][j]), int(out["sup_at"][j]), int(out["sup_shard"][j])
                if b >= 0:
                    self.owner[b] = s
                if out["payload"][j] is not None:
                    got[r] = (out["payload"][j], b, a)
        sup = sorted({b for _, b, a in (got[r] for r in rows if r in got) if b >= 0 and (as_of is None or a <= as_of)
                      and self.owner.get(b) not in self.missing})
        if sup and self.vmsg is not None:   # a superseder the asker cannot see is not named
            sup = [b for b, ok in zip(sup, self.visible(sup).tolist()) if ok]
        sup_ids = dict(zip(sup, self.ids(sup))) if sup else {}
        out_events: list[Optional[Event]] = []
        for r, sc in zip(rows, scores):
            if r not in got:
                out_events.append(None)
                continue
            pl, b, a = got[r]
            e = Event(id=pl["id"], time=int(pl["time"]), source=pl["source"], kind=pl["kind"],
                      tokens=int(pl["tokens"]), score=float(sc), text=pl.get("text"),
                      entities=list(pl.get("entities") or []), links=list(pl.get("links") or []),
                      attrs=dict(pl.get("attrs") or {}), shard=self.owner[r], row=r)
            if b in sup_ids:
                e.superseded_by, e.superseded_at = sup_ids[b], a
            out_events.append(e)
        if self.vmsg is not None:
            self._drop_unseen_links([e for e in out_events if e is not None and e.links])
        return out_events

    def _drop_unseen_links(self, events: list) -> None:
        """Keep only the links whose target some shard holds, live, for this asker (one round to
        every shard): an event's links are names too, and what the asker may not see is never
        named. An unanswering shard's targets count as unseen."""
        ids = sorted({str(x[0]) for e in events for x in e.links})
        if not ids:
            return
        reqs = {k: self._with_view({"rows": np.zeros(0, np.int64), "fields": ["visible"], "check_ids": ids})
                for k in self.cluster.shards}
        seen = np.zeros(len(ids), bool)
        for out in self._scatter("Fetch", reqs).values():
            seen |= np.asarray(out["ids_seen"], bool)
        ok = {i for i, v in zip(ids, seen.tolist()) if v}
        for e in events:
            e.links = [x for x in e.links if str(x[0]) in ok]

    # -- expansion -----------------------------------------------------------------------------
    def _params_msg(self, direction, t_lo, t_hi, as_of) -> dict:
        p = self.params
        return {"direction": int(direction), "t_lo": int(t_lo), "t_hi": int(t_hi), "as_of": as_of,
                "link_weight": link_weights(p).astype(np.float64), "hub_postings": int(p.hub_postings),
                "hub_window_s": int(p.hub_window_days * DAY), "max_per_entity": int(p.max_per_entity),
                "entity_weight": float(p.entity_weight), "entity_max_df": int(p.entity_max_df),
                "entity_max_share": float(p.entity_max_share), "max_edge_visits": int(p.max_edge_visits),
                "term_weight": float(p.term_weight),
                **({"view": self.vmsg} if self.vmsg is not None else {})}

    def _wave(self, rows: np.ndarray, pmsg: dict) -> None:
        """Fetch the full neighbour enumeration of `rows` into the neighbour store: ``Expand`` on
        their owners (links with visit positions, entities with holders, the owner's walk
        parts) and on the other holders of those entities (their walk parts); the kernel
        `merge_wave` merges the parts and replays each row's enumeration. Owners and holders
        are asked in one round: every reply lists the entities of the rows it reaches
        (`reach`), so the holders of a row's entities are known before the row is expanded.
        Holders of rows not known that way (seeds, rows reached over a cross-shard link) are
        asked in a second round once the owners have answered."""
        self.waves += 1
        self.rounds += 1
        nb = self.nbs
        rows = np.unique(np.asarray(rows, np.int64))
        groups = self._by_owner(rows)
        reqs = {k: {"rows": v} for k, v in groups.items()}
        asked = self._predicted_walks(rows)
        for h, keys in asked.items():
            reqs.setdefault(h, {}).update({"walk_u": keys[0], "walk_t": nb.tim[keys[0]], "walk_e": keys[1]})
        for r in reqs.values():
            r["params"] = pmsg
            if self.reach:
                r["reach"] = self.reach
        res = self._scatter("Expand", reqs)
        self._learn_reach(res)
        R, LP, LV, LT, LPOS, LTM, LSH, LTOT, EP, EG, EW, EU, EHP, EH, EK = ([] for _ in range(15))
        OW = []   # the owners' walk parts, one per entity entry: (ptr, rows, time, elig, side, shard)
        for k, v in groups.items():
            out = res.get(k)
            if out is None:   # the owner did not answer: its rows have no neighbours
                R.append(v)
                z = np.zeros(len(v) + 1, np.int64)
                LP.append(z), EP.append(z), LTOT.append(np.zeros(len(v), np.int64))
                continue
            R.append(v), LP.append(out["l_ptr"]), LV.append(out["l_v"]), LT.append(out["l_type"])
            LPOS.append(out["l_pos"]), LTM.append(out["l_time"]), LSH.append(out["l_shard"])
            LTOT.append(out["l_total"]), EP.append(out["e_ptr"]), EG.append(out["e_gid"])
            EW.append(out["e_w"]), EU.append(np.repeat(v, np.diff(out["e_ptr"])))
            EHP.append(out["e_hold_ptr"]), EH.append(out["e_hold"])
            EK.append(np.full(len(out["e_gid"]), k, np.int64))
            OW.append((out["ew_ptr"], out["ew_rows"], out["ew_time"], out["ew_elig"], out["ew_side"], k))
        cat = lambda xs, dt: np.concatenate(xs).astype(dt, copy=False) if xs else np.zeros(0, dt)  # noqa: E731
        rows = cat(R, np.int64)
        l_ptr, e_ptr = cat_ptr(LP), cat_ptr(EP)
        l_v, l_type, l_pos = cat(LV, np.int64), cat(LT, np.int8), cat(LPOS, np.int64)
        l_time, l_shard, l_total = cat(LTM, np.int64), cat(LSH, np.int64), cat(LTOT, np.int64)
        if self.vmsg is not None and len(l_v):   # never walk through a link target the asker cannot see
            self.owner.a[l_v] = l_shard + 1
            targets = np.unique(l_v)
            ok = self.visible(targets)[np.searchsorted(targets, l_v)]
            l_ptr = np.concatenate([[0], np.cumsum(ok)])[l_ptr]
            l_v, l_type, l_pos, l_time, l_shard = l_v[ok], l_type[ok], l_pos[ok], l_time[ok], l_shard[ok]
        e_gid, e_w, e_u, e_own = cat(EG, np.int64), cat(EW, np.float64), cat(EU, np.int64), cat(EK, np.int64)
        # one walk per distinct (row, entity); an entity listed twice walks the same parts twice
        order = np.lexsort((e_gid, e_u))
        new = np.ones(len(order), bool)
        new[1:] = (np.diff(e_u[order]) != 0) | (np.diff(e_gid[order]) != 0)
        e_wid = np.empty(len(order), np.int64)
        e_wid[order] = np.cumsum(new) - 1
        first = np.zeros(len(order), bool)
        first[order[new]] = True
        n_walks = int(new.sum())
        w_u, w_gid = e_u[order[new]], e_gid[order[new]]
        # parts: the owners' (first occurrence of each walk), then the other holders'
        P = []
        at = 0
        for ptr, prow, ptime, pelig, pside, k in OW:
            cnt = np.diff(ptr)
            f = first[at:at + len(cnt)]
            keep = np.repeat(f, cnt)
            P.append((np.repeat(e_wid[at:at + len(cnt)], cnt)[keep], prow[keep], ptime[keep], pelig[keep],
                      pside[keep], np.full(int(keep.sum()), k, np.int64)))
            at += len(cnt)
        if EH:
            hold_ptr = cat_ptr(EHP)
            hold = cat(EH, np.int64)
            cnt = np.diff(hold_ptr)
            x_of = np.repeat(np.arange(len(cnt)), cnt)
            ask = first[x_of] & (hold != e_own[x_of])
            if self.missing:
                ask &= ~np.isin(hold, sorted(self.missing))
            h_of, wid_of = hold[ask], e_wid[x_of[ask]]
            wkey = self._key(w_u, w_gid)
            # the walk parts the first round brought (a walk asked but not needed is dropped)
            for h, (ku, kg) in asked.items():
                out = res.get(h)
                if out is None or "w_ptr" not in out:
                    continue
                wid = np.searchsorted(wkey, self._key(ku, kg))
                wid = np.minimum(wid, max(n_walks - 1, 0))
                hit = (wkey[wid] == self._key(ku, kg)) if n_walks else np.zeros(len(ku), bool)
                cnt = np.diff(out["w_ptr"])
                keep = np.repeat(hit, cnt)
                P.append((np.repeat(wid, cnt)[keep], out["w_rows"][keep], out["w_time"][keep], out["w_elig"][keep],
                          out["w_side"][keep], np.full(int(keep.sum()), h, np.int64)))
                done = np.isin(wid_of, wid[hit]) & (h_of == h)
                h_of, wid_of = h_of[~done], wid_of[~done]
            reqs, second = {}, {}
            for h in np.unique(h_of).tolist():
                wids = np.unique(wid_of[h_of == h])
                second[h] = wids
                reqs[h] = {"walk_u": w_u[wids], "walk_t": nb.tim[w_u[wids]], "walk_e": w_gid[wids], "params": pmsg}
            if reqs and self.reach and len(l_v):
                # a second round anyway: it also brings the entities of the link targets on other
                # shards just learned (no reply reaches those), for the waves that expand them
                todo = np.ones(len(l_v), bool) if self.rk is None else self.rk.ok[l_v] == 0
                unknown, at = np.unique(l_v[todo], return_index=True)
                sh = l_shard[todo][at]
                for k in np.unique(sh).tolist():
                    if k not in self.missing:
                        reqs.setdefault(k, {"params": pmsg})["reach_rows"] = unknown[sh == k]
            for r in reqs.values():
                if self.reach:
                    r["reach"] = self.reach
            res2 = self._scatter("Expand", reqs) if reqs else {}
            self._learn_reach(res2)
            self.rounds += bool(reqs)
            for h, wids in second.items():
                out = res2.get(h)
                if out is None:
                    continue
                cnt = np.diff(out["w_ptr"])
                P.append((np.repeat(wids, cnt), out["w_rows"], out["w_time"], out["w_elig"], out["w_side"],
                          np.full(int(cnt.sum()), h, np.int64)))
        p_wid, p_rows, p_time = cat([x[0] for x in P], np.int64), cat([x[1] for x in P], np.int64), \
            cat([x[2] for x in P], np.int64)
        p_elig, p_side, p_shard = cat([x[3] for x in P], np.bool_), cat([x[4] for x in P], np.int8), \
            cat([x[5] for x in P], np.int64)
        # each walk: its earlier side nearest first (time, row descending), then its later side
        lo = p_side == 0
        srt = np.lexsort((np.where(lo, -p_rows, p_rows), np.where(lo, -p_time, p_time), p_side, p_wid))
        p_wid, p_rows, p_time, p_elig, p_side, p_shard = (a[srt] for a in (p_wid, p_rows, p_time, p_elig, p_side,
                                                                          p_shard))
        wp = np.searchsorted(p_wid, np.arange(n_walks + 1))
        self._in_range(l_v, p_rows)   # the kernels index per-row arrays without bounds checks
        mpe = int(pmsg["max_per_entity"])
        bound = len(l_v) + (int(np.minimum(np.diff(wp)[e_wid], 2 * mpe + np.diff(wp)[e_wid]).sum())
                            if len(e_wid) else 0)
        nb.reserve(bound)
        nb.fill = merge_wave(rows, l_ptr, l_v, l_type, l_pos, l_time, l_shard, l_total, self.lw64,
                             e_ptr, e_gid, e_w, e_wid, wp.astype(np.int64), p_rows, p_time, p_elig, p_side, p_shard,
                             mpe, self.ts, self.owner.a, nb.tim, nb.ok, nb.lo, nb.hi, nb.tot,
                             nb.v, nb.w, nb.k, nb.i, nb.pos, nb.fill)

    def _in_range(self, *arrays) -> None:
        """Rows a shard sent must be rows of the build the coordinator knows (a query racing a
        write's sync could see a shard of a larger build)."""
        for a in arrays:
            if len(a) and (int(a.max()) >= self.n or int(a.min()) < 0):
                raise ShardUnavailableError(f"a shard answered rows outside 0..{self.n - 1}: the cluster changed "
                                            f"build during the query; ask again")

    def _key(self, u: np.ndarray, gid: np.ndarray) -> np.ndarray:
        """(row, entity) as one int64, ordered like (row, entity)."""
        return np.asarray(u, np.int64) * self.n_ent + np.asarray(gid, np.int64)

    def _predicted_walks(self, rows: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """{holder shard: (rows, entity ids)}: the walks the other holders of `rows`' entities
        will be asked for, for the rows whose entities an earlier reply listed."""
        rk = self.rk
        if rk is None:
            return {}
        rows = rows[rk.ok[rows] == 1]
        if not len(rows):
            return {}
        cnt = rk.hi[rows] - rk.lo[rows]
        x = ranges(rk.lo[rows], cnt)
        u, gid = np.repeat(rows, cnt), rk.gid[x]
        hcnt = rk.hhi[x] - rk.hlo[x]
        h = rk.hold[ranges(rk.hlo[x], hcnt)]
        u, gid = np.repeat(u, hcnt), np.repeat(gid, hcnt)
        ask = h != self.owner.a[u] - 1
        if self.missing:
            ask &= ~np.isin(h, sorted(self.missing))
        u, gid, h = u[ask], gid[ask], h[ask]
        out = {}
        for k in np.unique(h).tolist():
            key = np.unique(self._key(u[h == k], gid[h == k]))
            out[k] = (key // self.n_ent, key % self.n_ent)
        return out

    def _learn_reach(self, res: dict) -> None:
        """Keep the entity lists (with holders) of reached rows that replies carry."""
        if not self.reach:
            return
        for out in res.values():
            if "r_rows" in out and len(out["r_rows"]):
                self._in_range(out["r_rows"])
                if self.rk is None:
                    self.rk = ReachStore(self.n)
                self.rk.add(out["r_rows"], out["r_ptr"], out["r_gid"], out["r_hold_ptr"], out["r_hold"])

    def expand(self, seeds, seed_scores, direction, t_lo, t_hi, as_of):
        """One best-first search per seed: on the coordinator's graph replica when every shard
        serves the state it was read from (one kernel call), else all advancing together in
        the kernels of kernels/frontier.py, a wave fetching what the blocked searches need next."""
        rep = self._replica()
        if rep is not None:
            return self._expand_on(rep, seeds, seed_scores, direction, t_lo, t_hi, as_of)
        p = self.params
        pmsg = self._params_msg(direction, t_lo, t_hi, as_of)
        seeds = np.asarray(seeds, np.int64)
        got = self.times(seeds.tolist())  # seed checks need their times
        # a row's neighbours depend on the walk's direction and window: a second walk of another
        # kind in the same query (a thin chain widened, heads.widen_thin) has its own store
        key = (int(direction), int(t_lo), int(t_hi), as_of)
        if key not in self._nbs:
            self._nbs[key] = NeighbourStore(self.n)
        self.nbs = self._nbs[key]
        tc = self.cache["time"]
        ok = np.zeros(len(seeds), np.uint8)
        for i, r in enumerate(seeds.tolist()):
            tr = tc.get(r)
            if not 0 <= r < self.n or tr is None or (as_of is not None and tr > as_of) or not t_lo <= tr <= t_hi:
                continue
            if self.owner.get(r) in self.missing:
                continue
            ok[i] = 1
            self.nbs.tim[r] = got[i]
        state = searches_start(seeds, np.asarray(seed_scores, np.float32).astype(np.float64), ok,
                               float(p.min_score), int(p.max_results))
        nb = self.nbs
        while True:
            need = searches_run(*state, nb.ok, nb.lo, nb.hi, nb.tot, nb.v, nb.w, nb.k, nb.i, nb.pos,
                                float(p.min_score), int(p.max_results), int(p.max_hops), int(p.max_edge_visits),
                                int(self.c.prefetch))
            if not len(need):
                break
            need = need[nb.ok[need] == 0]
            self._wave(need, pmsg)
        res_ptr, *out = searches_results(state[2], state[3], state[6], state[7])
        par, kind, via = out[2], out[3], out[4]
        self._hint_paths(par, kind, via)
        bounds = res_ptr.tolist()
        return [tuple([a[lo:hi] for a in out]) for lo, hi in zip(bounds[:-1], bounds[1:])]

    def _expand_on(self, rep, seeds, seed_scores, direction, t_lo, t_hi, as_of):
        """The expansion on a graph replica (shards/replica.py): the embedded kernel over the
        whole index's arrays; the owners of the rows it reached are the replica's. No why-path
        hints: the replica's fetches are local, nothing rides along."""
        groups = rep.expand(seeds, seed_scores, direction, t_lo, t_hi, as_of, self.view)
        self.on_replica = True
        return groups

    def _replica(self) -> Optional[GraphReplica]:
        """The coordinator's graph replica if every shard answered this query's seeds from the
        state it was read from (asked once per query); else None."""
        if not self._rep_checked:
            self._rep_checked = True
            self.rep = None if self.missing else self.c.replica_for(self.states)
            if self.rep is not None:
                self.owner.adopt(self.rep.owner)
        return self.rep

    def _hint_paths(self, par, kind, via) -> None:
        """What the why-paths of an expansion's events will ask (see `_riders`)."""
        par, kind, via = np.asarray(par, np.int64), np.asarray(kind), np.asarray(via, np.int64)
        ent = (kind == 2) & (par >= 0)
        pairs = np.stack([par[ent], via[ent]], 1)
        parents = par[par >= 0]
        if self._hint is not None:   # a second walk before the fetch (heads.widen_thin): both ride
            parents = np.concatenate([self._hint[0], parents])
            pairs = np.concatenate([np.stack(self._hint[1:], 1), pairs])
        pairs = np.unique(pairs, axis=0) if len(pairs) else np.zeros((0, 2), np.int64)
        self._hint = (np.unique(parents), pairs[:, 0], pairs[:, 1])


def set_aside(cluster, shards) -> str:
    """What a build watch said of these shards' replicas it set aside (serving another build or
    shard), as a clause to add to an error; empty when it set none aside."""
    notes = [f"shard {k} replica {r.name} {r.why}" for k in sorted(shards) if k in cluster.groups
             for r in cluster.groups[k].replicas if getattr(r, "why", None)]
    return f" (set aside by the build check: {'; '.join(notes)})" if notes else ""


_WARM = threading.Lock()
_warm_done = False


class Coordinator:
    """Answers causal queries over a `Cluster` of shards (in-process or remote), with the
    embedded engine's `query()` API. Stateless apart from a cache of shard stats and an optional
    read-only graph replica."""

    def __init__(self, cluster: Cluster, *, params: AnswerParams = AnswerParams(), encoder=None,
                 deadline_s: float = 10.0, prefetch: int = 64, reach: int = 2048, replica=None,
                 replica_reload_s: float = 5.0):
        """`replica`: a partitioned index directory (or a `GraphReplica` of one) whose graph the
        coordinator holds, so that chain expansion needs no shard round (shards/replica.py);
        it is reloaded in the background, at most every `replica_reload_s`, when the shards
        serve another state."""
        self.cluster, self.params, self.deadline_s, self.prefetch = cluster, params, deadline_s, prefetch
        self.reach = reach   # rows per Expand reply whose entity lists come back (0: off)
        if replica is not None and not isinstance(replica, GraphReplica):
            replica = GraphReplica(replica, params)
        if replica is not None and replica.params != params:
            raise InvalidQueryError("the graph replica was read with other engine parameters than the coordinator's")
        self.replica: Optional[GraphReplica] = replica
        if replica is not None:
            replica.warm_up()
        self.replica_reload_s = float(replica_reload_s)
        self._reload_lock = threading.Lock()
        self._reload_at = 0.0
        self._reload_wait = self.replica_reload_s   # grows while reloads do not catch up with the shards
        self.engine = Engine(params=params, graph=_NoGraph())
        self._encoder = encoder
        self._stats: Optional[dict] = None
        self.last_graph: Optional[DistributedGraph] = None

    @staticmethod
    def warm_up() -> None:
        """Compile (or load) the frontier kernels for the exact argument types a query uses, once
        per process, before the first query starts its deadline: in a fresh environment compiling
        takes seconds, and a first query that spent them would come back partial. Two rows, one
        link 0 -> 1."""
        global _warm_done
        if _warm_done:
            return
        with _WARM:
            if not _warm_done:
                Coordinator._compile_kernels()
                _warm_done = True

    @staticmethod
    def _compile_kernels() -> None:
        nb, own = NeighbourStore(2), Owners(2)
        i64 = lambda *x: np.array(x, np.int64)  # noqa: E731
        nb.reserve(4)
        e = np.zeros(0, np.int64)
        nb.fill = merge_wave(i64(0), i64(0, 1), i64(1), np.zeros(1, np.int8), i64(1), i64(0), i64(0), i64(1),
                             np.ones(1, np.float64), i64(0, 0), e, np.zeros(0, np.float64), e, i64(0), e, e,
                             np.zeros(0, np.bool_), np.zeros(0, np.int8), e, 1, 1.0, own.a, nb.tim, nb.ok, nb.lo,
                             nb.hi, nb.tot, nb.v, nb.w, nb.k, nb.i, nb.pos, nb.fill)
        state = searches_start(i64(0), np.ones(1, np.float64), np.ones(1, np.uint8), 0.02, 8)
        searches_run(*state, nb.ok, nb.lo, nb.hi, nb.tot, nb.v, nb.w, nb.k, nb.i, nb.pos, 0.02, 8, 2, 100, 4)
        searches_results(state[2], state[3], state[6], state[7])

    # -- graph replica -------------------------------------------------------------------------
    def replica_for(self, states: dict):
        """The graph replica if every shard served this query from the state it was read from;
        else None, and a reload starts in the background (the query expands through the shards)."""
        rep = self.replica
        if rep is None:
            return None
        if rep.current(states):
            return rep
        now = time.monotonic()
        if now >= self._reload_at and self._reload_lock.acquire(blocking=False):
            self._reload_at = now + self._reload_wait
            threading.Thread(target=self._reload_replica, args=(rep, dict(states)), daemon=True).start()
        return None

    def _reload_replica(self, old, states: dict) -> None:
        try:
            new = GraphReplica(old.path, self.params)   # same array types: the kernel is compiled
            self.replica = new
            if new.current(states):
                self._reload_wait = self.replica_reload_s
            else:   # not the data the shards serve (another index, or a sync under way): back off
                self._reload_wait = min(2 * self._reload_wait + 1.0, 600.0)
                self._reload_at = time.monotonic() + self._reload_wait
                bad = sorted(k for k in set(states) | set(new.states) if states.get(k) != new.states.get(k))
                log.warning(
                    "the graph replica at %s does not hold what shard(s) %s serve; chains expand through the "
                    "shards (next reload in %.0f s)", old.path, bad, self._reload_wait)
        except Exception as e:   # a directory mid-install: keep the old one, try again later
            log.warning("graph replica reload failed: %s", e)
        finally:
            self._reload_lock.release()

    def refresh_replica(self) -> bool:
        """Reload the graph replica now (after a sync, for instance); whether it was reloaded."""
        if self.replica is None:
            return False
        with self._reload_lock:
            self.replica = GraphReplica(self.replica.path, self.params)
        return True

    # -- shard stats ---------------------------------------------------------------------------
    def shard_stats(self, deadline_s: float = 5.0) -> dict:
        if self._stats is None:
            res, failed = self.cluster.scatter("Stats", {k: {} for k in self.cluster.shards},
                                               time.monotonic() + deadline_s)
            if not res:
                raise ShardUnavailableError(f"no shard answered Stats (shards {sorted(failed)})"
                                            + set_aside(self.cluster, failed))
            one = next(iter(res.values()))
            n_shards = int(one["n_shards"])
            if set(self.cluster.shards) != set(range(n_shards)):
                raise InvalidQueryError(f"the index has {n_shards} shards; the coordinator was given "
                                        f"{self.cluster.shards}")
            self._stats = {"n_global": int(one["n_global"]), "n_shards": n_shards, "dim": int(one["dim"]),
                           "encoder": one.get("encoder"), "shards": {k: v for k, v in res.items()},
                           "n_entities_global": int(one.get("n_entities_global", 0)),
                           "acl": any(bool(v.get("acl")) for v in res.values())}
        return self._stats

    @property
    def n_global(self) -> int:
        return self.shard_stats()["n_global"]

    @property
    def dim(self) -> int:
        return self.shard_stats()["dim"]

    @property
    def encoder(self):
        if self._encoder is None:
            spec = self.shard_stats().get("encoder")
            if isinstance(spec, dict):   # the encoder the index records (a model is loaded once)
                self._encoder = from_record(spec)
        return self._encoder

    def _vector(self, query) -> np.ndarray:
        if isinstance(query, str):
            if self.encoder is None:
                raise InvalidQueryError("this index has no text encoder recorded; query with a vector")
            return self.encoder.encode([query]).astype(np.float32)[0]
        try:
            q = np.asarray(query, np.float32)
        except (TypeError, ValueError) as e:
            raise InvalidQueryError(f"query must be text or a float vector: {e}") from None
        if q.ndim != 1 or q.shape[0] != self.dim:
            raise InvalidQueryError(f"query vector shape {q.shape}: expected ({self.dim},)")
        return unit_query_rows(q[None, :])[0]

    # -- queries -------------------------------------------------------------------------------
    def query(self, query: Union[str, np.ndarray], *, type: str = "chain", filters: Optional[Filters] = None,
              as_of: Optional[int] = None, direction: str = "back", budget_tokens: int = 4000,
              require_all: bool = False, deadline_s: Optional[float] = None, scope=None, principals=None,
              unrestricted: bool = False, fill: bool = False, text: Optional[str] = None, **filter_kw) -> Answer:
        """Same arguments and answer as `Index.query`, plus `require_all` (fail instead of a
        partial answer when a shard is down) and `deadline_s` (the whole query's deadline).
        The answer's `partial` / `missing_shards` say which shards did not contribute."""
        view = View.make(scope, principals)
        if view.principals is None and not unrestricted and self.shard_stats().get("acl"):
            raise AccessDeniedError("this index holds access lists; pass principals=[...] (who asks) "
                                    "or unrestricted=True")
        if filters is not None and filter_kw:
            raise InvalidQueryError("pass either filters= or filter keywords, not both")
        f = filters or Filters.from_dict({k: v for k, v in filter_kw.items()})
        if as_of is not None:
            f = replace(f, as_of=as_of)
        if type == "as_of" and f.as_of is None:
            raise InvalidQueryError("an as_of query needs as_of=<unix time>")
        check_query(type, direction, budget_tokens)
        self.warm_up()                   # compiling the kernels is not part of any query's deadline
        t0 = time.perf_counter()
        q = self._vector(query)
        deadline = time.monotonic() + (deadline_s if deadline_s is not None else self.deadline_s)
        g = DistributedGraph(self, deadline, bool(require_all))
        if text is None and isinstance(query, str):
            text = query
        g.text, g.qtype = text, type
        ans = self.engine.run(q, type, f, direction, int(budget_tokens), graph=g, view=view, text=text, fill=fill)
        ans.partial, ans.missing_shards = bool(g.missing), sorted(g.missing)
        ans.timings.update({"total_ms": 1e3 * (time.perf_counter() - t0), "waves": g.waves, "expand_rounds": g.rounds,
                            "on_replica": g.on_replica,
                            "rpcs": g.stats.calls,
                            "bytes_out": g.stats.bytes_out, "bytes_in": g.stats.bytes_in,
                            "failovers": g.stats.failovers, "hedges": g.stats.hedges})
        self.last_graph = g
        return ans

    def query_spec(self, spec: dict, vector: Optional[np.ndarray] = None, **kw) -> Answer:
        """`Index.query_spec` over the cluster (extra keywords go to `query`)."""
        q, args = spec_query(spec, vector)
        return self.query(q, **args, **kw)

    def close(self) -> None:
        self.cluster.close()


class _NoGraph:
    """Placeholder: a coordinator's engine always gets a per-query graph."""
    missing: list = []
