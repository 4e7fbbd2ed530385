"""LangChain and LlamaIndex retrievers against the real packages, over an embedded index and over a
real coordinator server on loopback (two shard servers), on the bundled sample corpus."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

import fastctx
from fastctx.errors import InvalidQueryError
from fastctx.integrations import RetrieverConfig, langchain_retriever, llamaindex_retriever

lc_docs = pytest.importorskip("langchain_core.documents")
lc_retrievers = pytest.importorskip("langchain_core.retrievers")
li_retrievers = pytest.importorskip("llama_index.core.retrievers")
li_schema = pytest.importorskip("llama_index.core.schema")

SAMPLE = fastctx.__path__[0] + "/sample_corpus"
VAULT_Q = "which card vault vendor do we use?"
CHAIN_Q = "what led to the double charges?"


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    idx, _ = fastctx.build(SAMPLE, tmp_path_factory.mktemp("integ") / "index")
    return idx


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """A 2-shard build of the sample behind two shard servers and a coordinator server."""
    pytest.importorskip("grpc")
    from fastctx.shards.coordinator import Coordinator
    from fastctx.shards.server import CoordinatorServer, ShardServer
    from fastctx.shards.transport import remote_cluster
    d = tmp_path_factory.mktemp("integ") / "two"
    fastctx.build(SAMPLE, d, shards=2)
    shards = [ShardServer(d, k, port=0).start() for k in range(2)]
    # a generous per-call limit: the first calls load the kernels, slow on a loaded machine
    coord = Coordinator(remote_cluster({k: [s.address] for k, s in enumerate(shards)}, call_timeout_s=30.0))
    server = CoordinatorServer(coord, port=0).start()
    client = fastctx.connect(server.address)
    yield client
    client.close()
    server.stop(0)
    coord.close()
    for s in shards:
        s.stop(0)


# ------------------------------------------------------------------------------------ LangChain
def test_langchain_chain_documents_are_the_answer(sample):
    r = langchain_retriever(sample, query_type="chain", budget_tokens=3000)
    assert isinstance(r, lc_retrievers.BaseRetriever)
    docs = r.invoke(CHAIN_Q)
    ans = sample.query(CHAIN_Q, type="chain", budget_tokens=3000)
    assert [d.id for d in docs] == [e.id for e in ans.events] and docs
    for d, e in zip(docs, ans.events):
        assert isinstance(d, lc_docs.Document) and d.page_content == e.text
        m = d.metadata
        assert (m["id"], m["date"], m["source"], m["kind"], m["why"], m["tokens"]) == \
            (e.id, e.date, e.source, e.kind, e.why, e.tokens)
        assert m["query_type"] == "chain" and m["current"] is False and m["current_id"] is None
    assert sum(d.metadata["tokens"] for d in docs) <= 3000
    assert all(d.metadata["why"] for d in docs)                                # why-paths travel along


def test_langchain_current_marks_the_current_version_and_superseded_ones(sample):
    docs = langchain_retriever(sample, query_type="current").invoke(VAULT_Q)
    cur = [d for d in docs if d.metadata["current"]]
    assert len(cur) == 1 and all(d.metadata["current_id"] == cur[0].id for d in docs)
    assert cur[0].metadata["current_date"] == cur[0].metadata["date"]
    old = [d for d in docs if d.metadata["superseded_by"]]
    assert old and all(d.metadata["superseded_date"] >= d.metadata["date"] for d in old)
    # as_of (an ISO date): the version current then, which a later one superseded
    then = langchain_retriever(sample, query_type="as_of", as_of="2024-06-01").invoke(VAULT_Q)
    was = [d for d in then if d.metadata["current"]]
    assert len(was) == 1 and was[0].id != cur[0].id
    assert all(d.metadata["time"] <= 1_717_200_000 for d in then)


def test_langchain_search_mode_filters_and_async(sample):
    r = langchain_retriever(sample, mode="search", k=4, filters={"time_from": "2024-06-01", "sources": ["slack"]})
    docs = r.invoke("double charge")
    hits = sample.search("double charge", k=4, time_from=1_717_200_000, sources=["slack"])
    assert [d.id for d in docs] == hits.ids() and len(docs) == 4
    assert all(d.metadata["source"] == "slack" and d.metadata["query_type"] == "search" for d in docs)
    assert [d.id for d in asyncio.run(r.ainvoke("double charge"))] == hits.ids()


def test_retriever_options_are_checked(sample):
    with pytest.raises(InvalidQueryError, match="unknown retriever option"):
        langchain_retriever(sample, budget=10)
    with pytest.raises(InvalidQueryError, match="mode"):
        llamaindex_retriever(sample, mode="fast")
    with pytest.raises(InvalidQueryError, match="as_of"):
        RetrieverConfig(as_of="last spring")
    with pytest.raises(InvalidQueryError, match="filter"):
        langchain_retriever(sample, filters={"team": "x"})
    with pytest.raises(InvalidQueryError):
        langchain_retriever(sample).invoke("   ")


# ------------------------------------------------------------------------------------ LlamaIndex
def test_llamaindex_nodes(sample):
    r = llamaindex_retriever(sample, query_type="current")
    assert isinstance(r, li_retrievers.BaseRetriever)
    nodes = r.retrieve(VAULT_Q)
    ans = sample.query(VAULT_Q, type="current")
    assert [n.node.node_id for n in nodes] == [e.id for e in ans.events]
    assert all(isinstance(n, li_schema.NodeWithScore) and isinstance(n.node, li_schema.TextNode) for n in nodes)
    cur = [n for n in nodes if n.node.metadata["current"]]
    assert [n.node.node_id for n in cur] == [ans.current.id]
    assert [n.score for n in nodes] == pytest.approx([e.score for e in ans.events])
    llm_view = cur[0].node.get_content(metadata_mode="llm")
    assert "current: True" in llm_view and ans.current.text in llm_view and "entities" not in llm_view
    same = r.retrieve(li_schema.QueryBundle(query_str=VAULT_Q))
    assert [n.node.node_id for n in same] == [n.node.node_id for n in nodes]


# ------------------------------------------------------------------------------------ over a remote client
def test_retrievers_over_a_coordinator_server(sample, remote):
    for qtype, q in (("chain", CHAIN_Q), ("current", VAULT_Q)):
        local = [d.id for d in langchain_retriever(sample, query_type=qtype).invoke(q)]
        assert [d.id for d in langchain_retriever(remote, query_type=qtype).invoke(q)] == local
        assert [n.node.node_id for n in llamaindex_retriever(remote, query_type=qtype).retrieve(q)] == local
    then = langchain_retriever(remote, query_type="as_of", as_of="2024-06-01").invoke(VAULT_Q)
    assert [d.id for d in then] == [d.id for d in langchain_retriever(
        sample, query_type="as_of", as_of="2024-06-01").invoke(VAULT_Q)]
    with pytest.raises(InvalidQueryError, match="search"):
        langchain_retriever(remote, mode="search").invoke(VAULT_Q)
    with pytest.raises(InvalidQueryError, match="unrestricted"):
        langchain_retriever(remote, unrestricted=True).invoke(VAULT_Q)


# ------------------------------------------------------------------------------------ optional packages
@pytest.mark.parametrize("make,module,extra", [("langchain_retriever", "langchain_core", "langchain"),
                                               ("llamaindex_retriever", "llama_index", "llamaindex")])
def test_missing_framework_names_the_extra(make, module, extra):
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "import fastctx, fastctx.integrations as I\n"
            "try:\n"
            f"    I.{make}(None)\n"
            "except fastctx.MissingExtraError as e:\n    print(e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert f"pip install 'fastctx[{extra}]'" in res.stdout


def test_classes_reachable_by_name():
    from fastctx.integrations import FastctxLangChainRetriever, FastctxLlamaIndexRetriever
    assert issubclass(FastctxLangChainRetriever, lc_retrievers.BaseRetriever)
    assert issubclass(FastctxLlamaIndexRetriever, li_retrievers.BaseRetriever)
    import fastctx.integrations as integ
    with pytest.raises(AttributeError):
        integ.NoSuchRetriever
