"""Framework retrievers: fastctx answers as LangChain documents and LlamaIndex nodes.

    from fastctx.integrations import langchain_retriever, llamaindex_retriever
    r = langchain_retriever(fastctx.open("index/"), query_type="chain", budget_tokens=3000)
    docs = r.invoke("what led to the double charges?")          # list[Document], a timeline
    r = llamaindex_retriever(fastctx.connect("host:7000"), query_type="current")
    nodes = r.retrieve("which card vault vendor do we use?")     # list[NodeWithScore]

Both wrap an `Index` or a remote client (`fastctx.connect`). Each document / node is one event
of the answer: its text, and metadata naming the event (id, date, source, kind, tokens, score),
why it is there (`why`, `parent`, `hops`), whether a later event replaced it (`superseded_by`,
`superseded_date`) and the answer's current fact (`current`, `current_id`, `current_date`) for
current / as_of questions. `mode="search"` returns plain filtered top-k hits instead (an
`Index` only). The framework packages are optional extras (`fastctx[langchain]`,
`fastctx[llamaindex]`), imported only when a retriever is made.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import InvalidQueryError
from .filters import Filters, unix_time
from .results import Answer
from .types import Event

MODES = ("answer", "search")
# bulky metadata a prompt does not need (LlamaIndex leaves these out of what the LLM sees)
_NOT_FOR_LLM = ("time", "datetime", "tokens", "score", "entities", "links", "parent", "hops", "shard", "row",
                "superseded_at", "query_type", "current_date")


@dataclass
class RetrieverConfig:
    """What each retrieval asks: `query_type` chain | current | as_of (mode "answer"), or
    `k` hits (mode "search"); filters as in `Index.query` (a dict or `Filters`; times may be
    datetimes or ISO strings); `as_of`; `direction`; `budget_tokens`; who asks (`principals`,
    `scope`, `unrestricted` for a local index holding access lists); `fill`."""
    mode: str = "answer"
    query_type: str = "chain"
    k: int = 10
    filters: Any = None
    as_of: Any = None
    direction: str = "back"
    budget_tokens: int = 4000
    principals: Optional[list] = None
    scope: Optional[dict] = None
    unrestricted: bool = False
    fill: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.mode not in MODES:
            raise InvalidQueryError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.filters is not None and not isinstance(self.filters, Filters):
            if not isinstance(self.filters, dict):
                raise InvalidQueryError(f"filters must be a dict of filter keys or Filters, got {self.filters!r}")
            self.filters = Filters.from_dict(self.filters)
        self.as_of = unix_time("as_of", self.as_of)


def retrieve_events(source, query: str, cfg: RetrieverConfig) -> tuple[list[Event], Optional[Answer]]:
    """(events, the answer or None in search mode) for one query, from an Index or a client."""
    if not isinstance(query, str) or not query.strip():
        raise InvalidQueryError(f"a retriever's query must be non-empty text, got {query!r}")
    who: dict = {}
    if cfg.principals is not None:
        who["principals"] = list(cfg.principals)
    if cfg.scope is not None:
        who["scope"] = cfg.scope
    if cfg.unrestricted:
        who["unrestricted"] = True
    if cfg.mode == "search":
        if not hasattr(source, "search"):
            raise InvalidQueryError("mode='search' needs a local Index (a remote client answers queries only)")
        hits = source.search(query, k=cfg.k, filters=cfg.filters or Filters(as_of=cfg.as_of), **who)
        return hits.events(0), None
    if cfg.fill:
        who["fill"] = True
    takes = inspect.signature(source.query).parameters
    extra = [k for k in ("fill", "unrestricted") if k in who and k not in takes]
    if extra:                  # a remote client has no such options: say so, not "unknown filter"
        raise InvalidQueryError(f"{type(source).__name__}.query() does not take {extra}; leave them unset")
    ans = source.query(query, type=cfg.query_type, filters=cfg.filters, as_of=cfg.as_of, direction=cfg.direction,
                       budget_tokens=cfg.budget_tokens, **who, **cfg.extra)
    events = list(ans.events)
    if ans.current is not None and all(e.id != ans.current.id for e in events):
        events.insert(0, ans.current)      # the fact asked for, even when the budget left it out
    return events, ans


def event_metadata(e: Event, ans: Optional[Answer]) -> dict:
    """Flat metadata of one event of an answer (JSON-ready)."""
    d = e.to_dict()
    meta = {k: d[k] for k in ("id", "date", "datetime", "time", "source", "kind", "tokens", "score", "why",
                              "parent", "hops", "superseded_by", "superseded_at", "superseded_date",
                              "entities", "shard", "row")}
    meta["links"] = [f"{ty}:{to}" for to, ty in e.links]
    meta.update({k: v for k, v in e.attrs.items() if k not in meta})
    cur = ans.current if ans is not None else None
    meta.update(query_type=ans.query_type if ans is not None else "search",
                current=cur is not None and cur.id == e.id,
                current_id=cur.id if cur is not None else None, current_date=cur.date if cur is not None else None)
    return meta


def _config(kw: dict) -> RetrieverConfig:
    names = set(RetrieverConfig.__dataclass_fields__)
    unknown = sorted(set(kw) - names)
    if unknown:
        raise InvalidQueryError(f"unknown retriever option(s) {unknown}; known: {sorted(names)}")
    return RetrieverConfig(**kw)


# ------------------------------------------------------------------------------------ LangChain
_LC = None


def _langchain_class():
    global _LC
    if _LC is not None:
        return _LC
    from .extras import require
    require("langchain_core", "langchain", "the LangChain retriever")
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from pydantic import ConfigDict

    class FastctxLangChainRetriever(BaseRetriever):
        """A LangChain retriever over a fastctx Index or remote client: each query returns the
        answer's events as Documents, in timeline order (see `fastctx.integrations`)."""
        model_config = ConfigDict(arbitrary_types_allowed=True)
        source: Any
        config: RetrieverConfig

        def _get_relevant_documents(self, query: str, *,
                                    run_manager: CallbackManagerForRetrieverRun) -> list:
            events, ans = retrieve_events(self.source, query, self.config)
            return [Document(page_content=e.text or "", metadata=event_metadata(e, ans), id=e.id) for e in events]

    _LC = FastctxLangChainRetriever
    return _LC


def langchain_retriever(source, **options):
    """A LangChain `BaseRetriever` over `source` (an Index or `fastctx.connect(...)`); options
    are `RetrieverConfig`'s (query_type, budget_tokens, filters, as_of, principals, ...)."""
    return _langchain_class()(source=source, config=_config(options))


# ------------------------------------------------------------------------------------ LlamaIndex
_LI = None


def _llamaindex_class():
    global _LI
    if _LI is not None:
        return _LI
    from .extras import require
    require("llama_index.core", "llamaindex", "the LlamaIndex retriever")
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    class FastctxLlamaIndexRetriever(BaseRetriever):
        """A LlamaIndex retriever over a fastctx Index or remote client: each query returns the
        answer's events as scored TextNodes, in timeline order (see `fastctx.integrations`)."""

        def __init__(self, source, config: RetrieverConfig, **kw):
            self.source, self.config = source, config
            super().__init__(**kw)

        def _retrieve(self, query_bundle: QueryBundle) -> list:
            events, ans = retrieve_events(self.source, query_bundle.query_str, self.config)
            out = []
            for e in events:
                meta = event_metadata(e, ans)
                node = TextNode(id_=e.id, text=e.text or "", metadata=meta,
                                excluded_llm_metadata_keys=[k for k in _NOT_FOR_LLM if k in meta],
                                excluded_embed_metadata_keys=list(meta))
                out.append(NodeWithScore(node=node, score=e.score if e.score == e.score else None))
            return out

    _LI = FastctxLlamaIndexRetriever
    return _LI


def llamaindex_retriever(source, **options):
    """A LlamaIndex `BaseRetriever` over `source` (an Index or `fastctx.connect(...)`); options
    are `RetrieverConfig`'s (query_type, budget_tokens, filters, as_of, principals, ...)."""
    return _llamaindex_class()(source, _config(options))


def __getattr__(name: str):
    """`from fastctx.integrations import FastctxLangChainRetriever` builds the class on demand."""
    if name == "FastctxLangChainRetriever":
        return _langchain_class()
    if name == "FastctxLlamaIndexRetriever":
        return _llamaindex_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
