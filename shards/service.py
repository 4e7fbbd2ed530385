"""The per-shard stages of a partitioned index, as plain functions of plain messages.

`ShardService` opens one shard directory of a partitioned index (see fastctx/partition.py) and
answers four stages, each a dict in, dict out (numpy arrays inside), validated by
`shards.wire`. A gRPC server (`shards.server`) and an in-process client (`LocalShardClient`)
both call these methods, so local and remote shards speak one protocol.

* ``Stats``  - shard number, global sizes, encoder, dimension.
* ``Search`` - filtered seeds, light hits only: global rows and scores, best first.
* ``Expand`` - one hop for a frontier: for owned rows, their eligible explicit links (both ends'
  rules of kernels/expand.py checked here, with each link's visit position), the entities they
  mention (global id, global df, holder shards) and this shard's part of every entity walk; for
  walks asked by the coordinator (rows owned elsewhere), this shard's part of those walks.
  A walk part lists, per side, postings entries nearest first (time, global row, eligible) up
  to ``max_per_entity`` eligible ones, cut where the time window or hub window closes the side:
  the coordinator merges the parts of all holder shards and replays the kernel's walk exactly.
* ``Fetch``  - per-row attributes (time, tokens, vector, supersession, slot entity, reverse
  supersession, id) and payloads of winners; entity names.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

import numpy as np

from fastctx.columns import keys64
from fastctx.csr import marked_lists, min_marked, ranges
from fastctx.derive import FLAG_ACTOR, bm25
from fastctx.errors import CorruptIndexError, InvalidQueryError
from fastctx.filters import Filters
from fastctx.graph import entity_weights, filter_rows
from fastctx.index import Index
from fastctx.kernels.walks import row_links, walk_parts, walkable_entities
from fastctx.params import AnswerParams
from fastctx.partition import check_sidecar, read_sidecar
from fastctx.view import View, holds_acl

from . import wire

I64_MAX = np.iinfo(np.int64).max


class ShardIndex(Index):
    """An `Index` that opens only one named shard of an index directory."""

    def __init__(self, path, shard_name: str, *, installed: bool = False, **kw):
        self._only = shard_name
        super().__init__(path, **kw)
        if installed:   # serve the installed state: logged writes become visible at the next sync
            from fastctx.shard import MemLog
            self._parts[0].log = MemLog()
            self._changed()

    @property
    def _lock_path(self) -> Path:
        return self.path / self._only / "LOCK"    # one writer per shard, not per index directory

    @property
    def marker(self) -> dict:
        return self._marker

    @marker.setter
    def marker(self, value: dict) -> None:
        if self._only not in value.get("shards", []):
            raise InvalidQueryError(f"{getattr(self, 'path', '')}: the index has no shard {self._only!r}")
        self._marker = {**value, "shards": [self._only]}


@dataclass(frozen=True)
class Sidecar:
    """The whole-corpus arrays a shard serves beside its segments (PARTITION.npz, written by
    fastctx/partition.py `sidecar_arrays`), one field each, all checked present on load."""
    grow: np.ndarray        # global row of each local row
    gent: np.ndarray        # global id of each local entity ...
    ent_df: np.ndarray      # ... its document frequency over the whole corpus
    hold_ptr: np.ndarray    # ... and the shards holding it (CSR)
    hold: np.ndarray
    out_ptr: np.ndarray     # outgoing links of each local row (CSR): target global row, type,
    out_dst: np.ndarray     # target time and owner shard
    out_type: np.ndarray
    out_time: np.ndarray
    out_shard: np.ndarray
    in_ptr: np.ndarray      # incoming links, the same way
    in_src: np.ndarray
    in_type: np.ndarray
    in_time: np.ndarray
    in_shard: np.ndarray
    sup_by: np.ndarray      # superseding global row (-1: current), when, and its shard
    sup_at: np.ndarray
    sup_shard: np.ndarray
    rev_ptr: np.ndarray     # the rows each local row superseded (CSR), their times and shards
    rev_rows: np.ndarray
    rev_time: np.ndarray
    rev_shard: np.ndarray

    def arrays(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def load(cls, shard_dir: Path) -> tuple["Sidecar", dict]:
        arrays, meta = read_sidecar(shard_dir)
        missing = sorted({f.name for f in fields(cls)} - set(arrays))
        if missing:
            raise CorruptIndexError(f"{shard_dir}: partition sidecar lacks arrays {missing}")
        return cls(**{f.name: arrays[f.name] for f in fields(cls)}), meta


def shard_state(shard, sidecar_meta: dict) -> str:
    """What a shard serves, as one string: its disk state key and its partition sidecar's
    checksum (an installed write changes both). A coordinator's graph replica (shards/replica.py)
    is used only while every shard's Search reply names the state it was read from."""
    from fastctx.shardgraph import state_key
    return f"{state_key(shard.manifest):08x}-{sidecar_meta.get('checksum', '')}"


class ShardService:
    """One shard of a partitioned index, serving the shard stages (see the module doc)."""

    def __init__(self, index_dir, shard: int):
        from .writes import ShardWriter
        index_dir = Path(index_dir)
        name = f"shard-{int(shard):03d}"
        self.index_dir, self.name = index_dir, name
        self.index = ShardIndex(index_dir, name, installed=True)
        self.sc, self.meta = Sidecar.load(index_dir / name)
        if int(self.meta["shard"]) != int(shard):
            raise InvalidQueryError(f"{index_dir / name}: sidecar says shard {self.meta['shard']}, not {shard}")
        self.shard_no = int(shard)
        sh = self.index.shards[0]
        self.sh = sh
        g = sh.graph
        check_sidecar(self.sc.arrays(), self.meta, sh.n, index_dir / name, sh.n_entities)
        self.grow = np.asarray(self.sc.grow, np.int64)
        self.times = np.asarray(g.times, np.int64)
        self.ev_ptr, self.ev_ent = np.asarray(g.ev_ptr), np.asarray(g.ev_ent)
        self.ent_ptr, self.ent_rows = np.asarray(g.ent_ptr), np.asarray(g.ent_rows)
        self.gent = np.asarray(self.sc.gent, np.int64)
        self.ent_df = np.asarray(self.sc.ent_df, np.int64)
        self.local_ent = {int(e): i for i, e in enumerate(self.gent.tolist())}
        self.slot = (sh.entity_flags & 1).astype(bool) if sh.n_entities else np.zeros(0, bool)
        self.actor = (sh.entity_flags & FLAG_ACTOR) != 0 if sh.n_entities else np.zeros(0, bool)
        self.hold_ptr = np.ascontiguousarray(self.sc.hold_ptr, np.int64)
        self.hold = np.ascontiguousarray(self.sc.hold, np.int32)
        # postings keys in (time, global row) order, per entity slice
        self.post_t = self.times[self.ent_rows] if len(self.ent_rows) else np.zeros(0, np.int64)
        self.post_g = self.grow[self.ent_rows] if len(self.ent_rows) else np.zeros(0, np.int64)
        self.n_global = int(self.meta["n_global"])
        self._weights: dict = {}
        self._views: dict = {}   # view key -> (hidden rows mask or None, post_ok per posting)
        self.doc_len = np.diff(self.ev_ptr)   # entities per row (BM25 document length)
        self.writer = ShardWriter(self)
        self.on_reload: list = []             # callbacks after Install (the server's build and cost)
        self.state = shard_state(sh, self.meta)   # what this shard serves (Search replies carry it)

    def reload(self) -> None:
        """Serve the directory just installed: the new state replaces this one in one step
        (in-flight requests finish on the old arrays); writer and callbacks carry over."""
        new = ShardService(self.index_dir, self.shard_no)
        new.writer, new.on_reload = self.writer, self.on_reload
        self.__dict__ = new.__dict__      # the old pinned index stays open for in-flight requests
        self.writer.svc = self
        for fn in self.on_reload:
            fn()

    # -- writes (shards/writes.py) -------------------------------------------------------------
    def Write(self, req: dict) -> dict:
        return self.writer.write(req)

    def Export(self, req: dict) -> dict:
        return self.writer.export(req)

    def Install(self, req: dict) -> dict:
        return self.writer.install(req)

    def warm_up(self) -> None:
        """Compile (or load) the kernels for this shard's exact array types before serving, so
        the first request does not spend its deadline compiling."""
        self.index.warm_up(engine=False)
        d = AnswerParams()
        # an empty Expand of owned rows compiles the link scan and the walk parts
        self._rows(np.zeros(0, np.int64), {
            "direction": 3, "max_per_entity": 1, "t_lo": 0, "t_hi": 0, "as_of": None, "hub_window_s": 0,
            "hub_postings": 0, "link_weight": np.ones(1, np.float32), "entity_weight": d.entity_weight,
            "entity_max_df": d.entity_max_df, "entity_max_share": d.entity_max_share, "term_weight": d.term_weight})

    # -- helpers -------------------------------------------------------------------------------
    def local_rows(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        loc = np.searchsorted(self.grow, rows)
        loc = np.minimum(loc, max(len(self.grow) - 1, 0))
        if len(rows) and (len(self.grow) == 0 or (self.grow[loc] != rows).any()):
            bad = rows[(self.grow[loc] != rows)] if len(self.grow) else rows
            raise wire.WireError(f"field 'rows': row {int(bad[0])} is not on shard {self.shard_no}")
        return loc

    def _view(self, msg) -> tuple[View, Optional[np.ndarray], np.ndarray]:
        """(view, hidden local rows or None, per-posting visibility for the walks) of a request's
        `view`, cached per distinct view (a few askers ask many queries)."""
        try:
            view = View.from_msg(msg)
        except InvalidQueryError as e:
            raise wire.WireError(str(e)) from None
        if not view.restricts:
            return view, None, np.zeros(0, np.uint8)
        key = repr(view)
        got = self._views.get(key)
        if got is None:
            hidden = view.hidden_mask(self.sh)
            post_ok = (np.zeros(0, np.uint8) if hidden is None
                       else (~hidden[self.ent_rows]).astype(np.uint8))
            if len(self._views) >= 64:
                self._views.pop(next(iter(self._views)))
            got = self._views[key] = (hidden, post_ok)
        return (view,) + got

    def _ent_w(self, p: dict) -> np.ndarray:
        key = (p["entity_weight"], p["entity_max_df"], p["entity_max_share"],
               p.get("term_weight", AnswerParams.term_weight))
        w = self._weights.get(key)
        if w is None:
            ap = AnswerParams(entity_weight=p["entity_weight"], entity_max_df=p["entity_max_df"],
                              entity_max_share=p["entity_max_share"], term_weight=key[3])
            w = self._weights[key] = entity_weights(self.ent_df, self.n_global, ap, np.asarray(self.sh.entity_flags))
        return w

    # -- stages --------------------------------------------------------------------------------
    def Stats(self, req: dict) -> dict:
        return {"shard": self.shard_no, "n_shards": int(self.meta["n_shards"]), "n_global": self.n_global,
                "n_local": int(self.sh.n), "dim": int(self.index.dim), "encoder": self.meta.get("encoder"),
                "key": self.meta.get("key"), "n_entities_global": int(self.meta["n_entities_global"]),
                "version": int(self.sh.version), "acl": holds_acl(self.sh),
                "doc_len_sum": int(self.ev_ptr[-1]) if len(self.ev_ptr) else 0}

    def Search(self, req: dict) -> dict:
        """Vector seeds (`vectors`) or lexical seeds (`words`: the query's derived word/term
        entity names, scored with the corpus-wide df the sidecar holds and `avg_len`), or one
        vector search per entity name (`per_entity`, the filters narrowed to each)."""
        try:
            f = Filters.from_dict(req.get("filters") or {}, as_of=req.get("as_of"))
            view = self._view(req.get("view"))[0]
            words = req.get("words")
            if req.get("vectors") is None:
                if words is None:
                    raise wire.WireError("a Search needs 'vectors' or 'words'")
                return self._lexical(words, req["k"], f, view, req.get("avg_len") or 1.0, req.get("bm25"))
            q = np.asarray(req["vectors"], np.float32)
            if q.shape[1] != self.index.dim:
                raise wire.WireError(f"field 'vectors' has dim {q.shape[1]}, the index has dim {self.index.dim}")
            if req.get("per_entity"):
                return self._per_entity(q, req, f, view)
            hits = self.index.search(q, k=req["k"], filters=f, view=view)
            out: dict = {}
            if words:   # the lexical seeds of the same query, in the same round trip
                lex = self._lexical(words, req.get("lex_k") or req["k"], f, view, req.get("avg_len") or 1.0,
                                    req.get("bm25"))
                out = {"lex_rows": lex["rows"], "lex_scores": lex["scores"]}
        except InvalidQueryError as e:
            raise wire.WireError(str(e)) from None
        rows = np.where(hits.rows >= 0, self.grow[np.maximum(hits.rows, 0)] if len(self.grow) else -1, -1)
        out.update({"rows": rows.astype(np.int64), "scores": hits.scores.astype(np.float32),
                    "counts": hits.counts.astype(np.int64), "state": self.state,
                    "n_allowed": int(self.index.allowed_count(f, req["k"], view))})
        if len(q) == 1 and req.get("hit_rows") and req.get("hit_fields"):   # the first hits' attributes
            loc = hits.rows[0, :min(int(hits.counts[0]), int(req["hit_rows"]))].astype(np.int64)
            got = self.Fetch({"rows": self.grow[loc], "fields": req["hit_fields"]})
            out.update({"hit_" + k: v for k, v in got.items()})
        if len(q) == 1 and req.get("hit_payloads"):
            at = self._payload_hits(hits.rows[0, :int(hits.counts[0])].astype(np.int64), int(req["hit_payloads"]),
                                    int(req.get("hit_rows") or 0))
            out["hit_payload_at"] = at     # through the view, as Fetch sends them
            out["hit_payload"] = self.Fetch({"rows": self.grow[hits.rows[0, at]], "fields": ["payload"],
                                             "view": req.get("view")})["payload"]
        if len(q) == 1 and req.get("reach"):   # the first hits' walkable entities, for the first wave
            loc = np.sort(hits.rows[0, :min(int(hits.counts[0]), int(req["reach"]))].astype(np.int64))
            d = AnswerParams()
            ep = {"direction": 3, "max_per_entity": d.max_per_entity, "entity_weight": d.entity_weight,
                  "entity_max_df": d.entity_max_df, "entity_max_share": d.entity_max_share,
                  "term_weight": d.term_weight, **(req.get("entity_params") or {})}
            _, _, ents = self._entities(loc, ep)
            out.update({"r_rows": self.grow[loc], "r_ptr": ents["ptr"], "r_gid": ents["gid"],
                        "r_hold_ptr": ents["hold_ptr"], "r_hold": ents["hold"]})
        return out

    _PER_ENTITY_ALONE = ("words", "lex_k", "hit_rows", "hit_fields", "hit_payloads", "reach", "entity_params")

    def _per_entity(self, q, req: dict, f: Filters, view) -> dict:
        """One search per name of `per_entity`, the filters narrowed to rows that also mention
        it: `rows`, `scores` [names, k] and `counts` [names], as for that many query vectors."""
        extra = [x for x in self._PER_ENTITY_ALONE if req.get(x)]
        if len(q) != 1 or extra:
            raise wire.WireError("'per_entity' takes one query vector and no other request "
                                 f"(got {len(q)} vector(s){', and ' + ', '.join(extra) if extra else ''})")
        k, names = req["k"], req["per_entity"]
        rows = np.full((len(names), k), -1, np.int64)
        scores = np.full((len(names), k), np.nan, np.float32)
        counts = np.zeros(len(names), np.int64)
        for i, hits in enumerate(self.index.search_per_entity(q, k, names, filters=f, view=view)):
            c = int(hits.counts[0])
            counts[i] = c
            rows[i, :c] = self.grow[hits.rows[0, :c]]
            scores[i, :c] = hits.scores[0, :c]
        return {"rows": rows, "scores": scores, "counts": counts, "state": self.state}

    def _lexical(self, words, k, f, view, avg_len, bm) -> dict:
        k1, b = ((float(bm[0]), float(bm[1])) if bm is not None and len(bm) == 2
                 else (AnswerParams.bm25_k1, AnswerParams.bm25_b))
        known = [(w, le) for w, le in zip(words, self.sh.lookup_entities(keys64(list(words))).tolist()) if le >= 0]
        postings = [self.ent_rows[self.ent_ptr[le]:self.ent_ptr[le + 1]] for _, le in known]
        rows, scores = bm25(postings, [int(self.ent_df[le]) for _, le in known], self.n_global,
                            self.doc_len, float(avg_len), k1, b)
        keep = filter_rows(self.index, 0, rows, f, view)
        rows, scores = self.grow[rows[keep]] if len(self.grow) else rows[keep], scores[keep]
        top = np.lexsort((rows, -scores))[:k]
        return {"rows": rows[top].astype(np.int64), "scores": scores[top].astype(np.float64)}

    def Fetch(self, req: dict) -> dict:
        loc = self.local_rows(req["rows"])
        _, hidden, _ = self._view(req.get("view"))
        seen = np.ones(len(loc), bool) if hidden is None else ~hidden[loc]
        out: dict = {}
        for f in req["fields"]:
            if f == "time":
                out[f] = self.times[loc]
            elif f == "tokens":
                out[f] = np.asarray(self.sh.tokens)[loc].astype(np.int64)
            elif f == "kind":   # an index into the names of the kinds these rows have
                present, idx = np.unique(np.asarray(self.sh.kind_codes)[loc], return_inverse=True)
                out[f] = idx.ravel().astype(np.uint16)
                out["kind_names"] = [self.sh.kinds[int(c)] for c in present.tolist()]
            elif f == "vector":
                out[f] = self.sh.vectors(loc)
            elif f == "sup":
                out["sup_by"], out["sup_at"] = self.sc.sup_by[loc], self.sc.sup_at[loc]
                out["sup_shard"] = self.sc.sup_shard[loc]
            elif f == "slot":
                out[f] = self._slots(loc)
            elif f == "actors":   # CSR: each row's actor entities, global ids and document frequencies
                out["actors_ptr"], le = marked_lists(self.ev_ptr, self.ev_ent, loc, self.actor)
                out["actors"], out["actors_df"] = self.gent[le], self.ent_df[le]
            elif f == "rev":
                lo, hi = self.sc.rev_ptr[loc], self.sc.rev_ptr[loc + 1]
                ptr = np.zeros(len(loc) + 1, np.int64)
                np.cumsum(hi - lo, out=ptr[1:])
                idx = ranges(lo, hi - lo)
                out["rev_ptr"], out["rev_rows"] = ptr, self.sc.rev_rows[idx]
                out["rev_time"], out["rev_shard"] = self.sc.rev_time[idx], self.sc.rev_shard[idx]
                out["rev_at"] = np.repeat(self.times[loc], hi - lo)
            elif f == "id":
                out[f] = [self._id(int(r)) for r in loc.tolist()]
            elif f == "payload":   # what the asker may not see is never sent
                out[f] = [self._payload(int(r)) if ok else None for r, ok in zip(loc.tolist(), seen.tolist())]
            elif f == "visible":
                out[f] = seen.astype(np.uint8)
            elif f == "entity_names":
                ents = req.get("entities")
                if ents is None or len(ents) != len(loc):
                    raise wire.WireError("field 'entities' must give one entity id per row for entity_names")
                out[f] = [self._entity_name(int(e)) for e in np.asarray(ents).tolist()]
        if req.get("check_ids"):   # which of these ids name a live event of this shard the asker sees
            ids = list(req["check_ids"])
            rows = np.asarray(self.sh.lookup_ids(keys64(ids)), np.int64)
            out["ids_seen"] = np.array([r >= 0 and (hidden is None or not hidden[r]) and self._id(int(r)) == i
                                        for r, i in zip(rows.tolist(), ids)], np.uint8)
        if req.get("also_ids") is not None:
            out["also_ids"] = [self._id(int(r)) for r in self.local_rows(req["also_ids"]).tolist()]
        if req.get("also_names") is not None:
            ents = req.get("also_entities")
            if ents is None or len(ents) != len(req["also_names"]):
                raise wire.WireError("field 'also_entities' must give one entity id per row of 'also_names'")
            self.local_rows(req["also_names"])
            out["also_names"] = [self._entity_name(int(e)) for e in np.asarray(ents).tolist()]
        return out

    def Expand(self, req: dict) -> dict:
        p = req["params"]
        out: dict = {}
        rows = req.get("rows")
        if rows is not None and len(rows):
            out.update(self._rows(self.local_rows(rows), p))
        wu, wt, we = req.get("walk_u"), req.get("walk_t"), req.get("walk_e")
        if wu is not None and len(wu):
            if wt is None or we is None or not len(wu) == len(wt) == len(we):
                raise wire.WireError("fields 'walk_u', 'walk_t', 'walk_e' must have one entry per walk")
            out.update({"w_" + k: v for k, v in self._walks(wu, wt, we, p).items()})
        if req.get("reach"):
            out.update(self._reach(out, int(req["reach"]), p, req.get("reach_rows")))
        return out

    # -- expand: owned rows --------------------------------------------------------------------
    def _rows(self, loc: np.ndarray, p: dict) -> dict:
        """Owned rows: their links (the Numba kernel `row_links`), their walkable entities with
        global id, df, weight and holder shards, and this shard's part of each entity walk."""
        sc, direction = self.sc, int(p["direction"])
        as_of = I64_MAX if p["as_of"] is None else int(p["as_of"])
        loc = np.ascontiguousarray(loc, np.int64)
        l_ptr, l_v, l_type, l_pos, l_time, l_shard, l_total = row_links(
            loc, self.grow, self.times, sc.out_ptr, sc.out_dst, sc.out_type, sc.out_time,
            sc.out_shard, sc.in_ptr, sc.in_src, sc.in_type, sc.in_time, sc.in_shard,
            np.asarray(p["link_weight"], np.float32), direction, int(p["t_lo"]), int(p["t_hi"]), as_of)
        out = {"l_ptr": l_ptr, "l_v": l_v, "l_type": l_type, "l_pos": l_pos, "l_time": l_time, "l_shard": l_shard,
               "l_total": l_total}
        le, of, ents = self._entities(loc, p)
        out.update({"e_" + k: v for k, v in ents.items()})
        out["e_df"] = self.ent_df[le]
        # this shard's part of each of those walks (one per entity entry, duplicates included)
        walks = self._walk_parts(self.grow[loc][of], self.times[loc][of], le, p)
        out.update({"ew_" + k: v for k, v in walks.items()})
        return out

    def _entities(self, loc: np.ndarray, p: dict):
        """The entities of local rows ``loc`` an expansion walks (weight > 0), in the rows'
        mention order: (local entity ids, row index of each, {ptr, gid, w, hold_ptr, hold})."""
        if not (p["direction"] & 3 and p["max_per_entity"] > 0):   # no entity walks: no row lists any
            none = np.zeros(0, np.int64)
            return none, none, {"ptr": np.zeros(len(loc) + 1, np.int64), "gid": none, "w": np.zeros(0, np.float32),
                                "hold_ptr": np.zeros(1, np.int64), "hold": np.zeros(0, np.int32)}
        le, of, ptr, gid, w, hold_ptr, hold = walkable_entities(
            np.ascontiguousarray(loc, np.int64), self.ev_ptr, self.ev_ent, self._ent_w(p), self.hold_ptr, self.hold,
            self.gent)
        return le, of, {"ptr": ptr, "gid": gid, "w": w, "hold_ptr": hold_ptr, "hold": hold}

    def _reach(self, out: dict, cap: int, p: dict, asked=None) -> dict:
        """The walkable entities (with holders) of up to `cap` rows of this shard: the owned rows
        `asked` (``reach_rows``), then those this reply reaches (eligible walk entries, then link
        targets; first listed first), so that the coordinator can ask their owners and holders
        in one round when it expands them."""
        parts = [out[r][out[e]] for r, e in (("ew_rows", "ew_elig"), ("w_rows", "w_elig")) if r in out]
        if asked is not None:
            parts.insert(0, np.asarray(asked, np.int64))
        if "l_v" in out:
            parts.append(out["l_v"][out["l_shard"] == self.shard_no])
        rows = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        uniq, first = np.unique(rows, return_index=True)
        rows = np.sort(uniq[np.argsort(first, kind="stable")][:cap])
        _, _, ents = self._entities(self.local_rows(rows), p)
        return {"r_rows": rows, "r_ptr": ents["ptr"], "r_gid": ents["gid"], "r_hold_ptr": ents["hold_ptr"],
                "r_hold": ents["hold"]}

    # -- expand: entity walks ------------------------------------------------------------------
    def _walks(self, wu, wt, we, p) -> dict:
        le = [self.local_ent.get(int(e), -1) for e in np.asarray(we).tolist()]
        return self._walk_parts(wu, wt, le, p)

    def _walk_parts(self, wu, wt, wle, p) -> dict:
        """Per walk: entries (global row, time, eligible, side 0=lo/1=hi), each side nearest first
        (the Numba kernel `walk_parts`)."""
        i64 = lambda x: np.ascontiguousarray(x, np.int64)  # noqa: E731
        as_of = I64_MAX if p["as_of"] is None else int(p["as_of"])
        post_ok = self._view(p.get("view"))[2]
        ptr, rows, times, elig, side = walk_parts(
            i64(wu), i64(wt), i64(wle), self.ent_ptr, self.post_t, self.post_g, self.ent_df,
            int(p["direction"]), int(p["max_per_entity"]), int(p["t_lo"]), int(p["t_hi"]), as_of,
            int(p["hub_window_s"]), int(p["hub_postings"]), post_ok)
        return {"ptr": ptr, "rows": rows, "time": times, "elig": elig, "side": side}

    # -- fetch helpers -------------------------------------------------------------------------
    def _payload_hits(self, loc: np.ndarray, first: int, upto: int) -> np.ndarray:
        """Positions of the hits whose payloads a Search sends: the first `first`, and those of
        the first `upto` that name a fact (slot entity) one of the first names: its other versions
        and the events that mention it, what a current / as_of answer shows beside its winner."""
        n = min(first, len(loc))
        at = np.arange(n, dtype=np.int64)
        later = loc[n:upto]
        if len(later):
            slots = self._slots(loc[:n + len(later)])
            named = slots[:n][slots[:n] >= 0]
            at = np.concatenate([at, n + np.flatnonzero(np.isin(slots[n:], named))])
        return at

    def _slots(self, loc: np.ndarray) -> np.ndarray:
        """Per row, the smallest global id of its slot entities (-1: none)."""
        return min_marked(self.ev_ptr, self.ev_ent, loc, self.slot, self.gent)

    def _id(self, r: int) -> str:
        seg, local = self.sh.locate(r)
        return seg.ids[local]

    def _payload(self, r: int) -> dict:
        e = self.index.event(0, r)
        return {"id": e.id, "time": e.time, "source": e.source, "kind": e.kind, "tokens": e.tokens,
                "text": e.text, "entities": list(e.entities), "links": [list(x) for x in e.links],
                "attrs": e.attrs}

    def _entity_name(self, gid: int) -> Optional[str]:
        le = self.local_ent.get(gid)
        return None if le is None else self.sh.entity_name(le)

