"""Operations of the sharded service: Prometheus metrics scraped over HTTP, the JSON access log,
configuration by flag / environment / file through the real CLI, and the refusal to mix
builds. Real shard and coordinator servers on 127.0.0.1, real CLI processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from conftest import make_corpus, query_vectors_near

from fastctx.auth import AuthError
from fastctx.cli import main
from fastctx.index import build
from fastctx.params import AnswerParams
from fastctx.shards import wire
from fastctx.shards.coordinator import Coordinator
from fastctx.shards.metrics import MetricsUnavailableError, Observer
from fastctx.shards.server import BuildMismatchError, CoordinatorServer, ShardServer, connect
from fastctx.shards.transport import remote_cluster

prom_parser = pytest.importorskip("prometheus_client.parser")
try:
    import tomllib
except ImportError:  # Python 3.10: TOML files need tomli
    tomllib = None
needs_toml = pytest.mark.skipif(tomllib is None, reason="reading TOML needs Python 3.11+")
TOKEN = "ops-test-token-0123456789"
SECRET = "zanzibar-quokka-secret"       # query words that must never reach a log


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ops")
    a = make_corpus(root / "corpus-a", 300, seed=3, dim=16)
    b = make_corpus(root / "corpus-b", 240, seed=5, dim=16)
    build(a.dir, root / "a", shards=2)
    build(a.dir, root / "a-again", shards=2)
    build(b.dir, root / "b", shards=2)
    (root / "tokens.json").write_text(json.dumps({TOKEN: ["user:ana"]}))
    servers = {(name, k): ShardServer(root / name, k, port=0, metrics_port=0).start()
               for name in ("a", "b") for k in range(2)}
    yield {"root": root, "servers": servers, "q": query_vectors_near(a.centers, 3, seed=4)}
    for s in servers.values():
        s.stop(0)


@pytest.fixture(autouse=True)
def _restore_logging():
    """The serve commands configure the ``fastctx`` loggers for their process; undo that here."""
    import logging
    lg = logging.getLogger("fastctx")
    saved = (list(lg.handlers), lg.level, lg.propagate)
    yield
    lg.handlers[:], lg.level, lg.propagate = saved[0], saved[1], saved[2]


def _scrape(address: str) -> dict:
    """{(name, frozenset(labels)): value} of a metrics endpoint."""
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in prom_parser.text_string_to_metric_families(text) for s in fam.samples}


def _value(samples: dict, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def _coordinator(world, spec: dict, **kw):
    addr = {k: [world["servers"][s].address if isinstance(s, tuple) else s for s in v] for k, v in spec.items()}
    cluster = remote_cluster(addr, call_timeout_s=1.0, hedge_s=None, down_s=30.0)
    try:
        return CoordinatorServer(Coordinator(cluster, deadline_s=5.0), port=0, **kw).start()
    except BaseException:
        cluster.close()
        raise


# ------------------------------------------------------------------------------------ metrics
def _dead_address() -> str:
    """A loopback port where nothing listens any more."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_metrics_count_queries_stages_rpcs_failovers_and_refusals(world):
    first = ShardServer(world["root"] / "a", 0, port=0).start()     # shard 0's preferred replica, stopped below
    dead = _dead_address()                                         # a replica of shard 1 that never answers
    srv = _coordinator(world, {0: [first.address, ("a", 0)], 1: [("a", 1), dead]},
                       tokens=world["root"] / "tokens.json", metrics_port=0)
    try:
        assert len(srv.unchecked) == 1 and dead in srv.unchecked[0]
        with connect(srv.address, token=TOKEN) as c:
            c.query(world["q"][0], type="chain")
            first.stop(0)                                          # the next calls fail over to ("a", 0)
            for q in world["q"]:
                assert c.query(q, type="chain", text=SECRET).events
            c.query(world["q"][0], type="current")
            with pytest.raises(Exception):
                c.query(world["q"][0], type="chain", budget_tokens=0)     # refused by the wire schema
            with pytest.raises(Exception, match="as_of"):
                c.query(world["q"][0], type="as_of")                      # refused by the engine
        with connect(srv.address) as anon, pytest.raises(AuthError):
            anon.query(world["q"][0])
        m = _scrape(srv.obs.metrics_address)
        assert _value(m, "fastctx_queries_total", type="chain", outcome="ok") == 4
        assert _value(m, "fastctx_queries_total", type="current", outcome="ok") == 1
        assert _value(m, "fastctx_chain_expansions_total", where="shards") == 4     # no graph replica here
        assert _value(m, "fastctx_query_stage_seconds_count", type="chain", stage="expand") == 4
        assert _value(m, "fastctx_query_stage_seconds_count", type="chain", stage="total") == 4
        assert _value(m, "fastctx_rpcs_total", service="fastctx.Coordinator", method="Query", code="OK") == 5
        assert _value(m, "fastctx_refusals_total", reason="auth") == 1
        assert _value(m, "fastctx_refusals_total", reason="wire") == 2
        assert _value(m, "fastctx_queries_total", type="as_of", outcome="error") == 1
        assert _value(m, "fastctx_shard_failovers_total") >= 1           # the stopped replica, once
        assert _value(m, "fastctx_shard_calls_total") > 4
        assert _value(m, "fastctx_shard_bytes_total", direction="in") > 0
        assert _value(m, "fastctx_rpc_duration_seconds_count", method="Query") == 8

        shard = _scrape(world["servers"][("a", 1)].obs.metrics_address)
        assert _value(shard, "fastctx_rpcs_total", service="fastctx.Shard", method="Search", code="OK") >= 4
        assert _value(shard, "fastctx_rpc_received_bytes_total", method="Search") > 0
        assert _value(shard, "fastctx_build_info", shard="1", build=world["servers"][("a", 1)].build) == 1
    finally:
        first.stop(0)
        srv.stop(0)
        srv.coordinator.close()


def test_partial_answers_are_counted(world, tmp_path):
    one = ShardServer(world["root"] / "a", 1, port=0).start()
    srv = _coordinator(world, {0: [("a", 0)], 1: [one.address]}, metrics_port=0)
    try:
        one.stop(0)
        with connect(srv.address) as c:
            ans = c.query(world["q"][0])
        assert ans.partial and ans.missing_shards == [1]
        m = _scrape(srv.obs.metrics_address)
        assert _value(m, "fastctx_partial_answers_total") == 1
        assert _value(m, "fastctx_queries_total", type="chain", outcome="partial") == 1
    finally:
        srv.stop(0)
        srv.coordinator.close()


def test_metrics_port_without_the_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)     # as if not installed
    with pytest.raises(MetricsUnavailableError, match=r"fastctx\[metrics\]"):
        Observer("fastctx.Shard", metrics_port=0)
    assert Observer("fastctx.Shard").metrics_address is None         # no port: no package needed


def test_shard_server_refusals_are_counted_by_reason(world):
    srv = world["servers"][("b", 0)]
    stub = grpc.insecure_channel(srv.address).unary_unary("/fastctx.Shard/Search")
    with pytest.raises(grpc.RpcError) as e:
        stub(wire.encode({"v": wire.SCHEMA_VERSION, "k": 5, "nonsense": 1}), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    m = _scrape(srv.obs.metrics_address)
    assert _value(m, "fastctx_refusals_total", service="fastctx.Shard", reason="wire") >= 1
    assert _value(m, "fastctx_rpcs_total", method="Search", code="INVALID_ARGUMENT") >= 1


# ------------------------------------------------------------------------------------ logs, config, CLI
def _spawn(args, env_extra, cwd):
    env = {**os.environ, **env_extra, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([str(Path(sys.executable).parent / "fastctx"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def _wait_line(proc, needle: str, timeout: float = 60.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if needle in line:
            return line
        if not line and proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
    raise AssertionError(f"no {needle!r} line within {timeout}s")


@needs_toml
def test_coordinator_cli_from_config_file_and_env_logs_json_without_payloads(world, tmp_path):
    a0, a1 = world["servers"][("a", 0)], world["servers"][("a", 1)]
    cfg = tmp_path / "etc" / "coordinator.toml"
    cfg.parent.mkdir()
    (cfg.parent / "tokens.json").write_text(json.dumps({TOKEN: ["user:ana"]}))
    cfg.write_text(f'shard = ["0={a0.address}", "1={a1.address}"]\n'
                   'tokens = "tokens.json"          # relative to this file\n'
                   'log-format = "text"\nmetrics-port = 0\nmax_concurrent = 4\n')
    proc = _spawn(["serve", "coordinator", "--config", str(cfg)], {"FASTCTX_LOG_FORMAT": "json"}, tmp_path)
    try:
        started = json.loads(_wait_line(proc, "serving on"))      # the start-up line is JSON too
        assert started["logger"] == "fastctx.server" and started["level"] == "info"
        line = started["msg"]
        addr = line.split("serving on ")[1].split(",")[0].strip()
        metrics = line.split("metrics on http://")[1].split("/metrics")[0]
        with connect(addr, token=TOKEN) as c:
            c.query(world["q"][0], text=SECRET)
        with connect(addr, token="wrong-token-but-long-enough") as c, pytest.raises(AuthError):
            c.query(world["q"][0])
        assert _value(_scrape(metrics), "fastctx_queries_total", type="chain", outcome="ok") == 1
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    recs = [json.loads(x) for x in err.splitlines() if x.strip()]      # JSON format: every line is JSON
    access = [r for r in recs if r.get("logger") == "fastctx.access"]
    assert [r["status"] for r in access if r["method"] == "Query"] == ["OK", "UNAUTHENTICATED"]
    ok = access[0]
    assert ok["service"] == "fastctx.Coordinator" and ok["peer"].startswith("ipv4:127.0.0.1:")
    assert ok["duration_ms"] > 0 and ok["request_bytes"] > 0 and ok["reply_bytes"] > 0
    assert SECRET not in err and TOKEN not in err and "wrong-token" not in err


def _serve_once(monkeypatch, args, env=None):
    """Run `fastctx serve ...` through click with a real server that is stopped instead of
    served forever; returns (result, server)."""
    import fastctx.shards.server as server_mod
    got = {}

    def once(srv):
        got["srv"] = srv
        srv.start()
        srv.stop(0)
    monkeypatch.setattr(server_mod, "serve_forever", once)
    res = CliRunner().invoke(main, args, env=env or {}, catch_exceptions=False)
    return res, got.get("srv")


def test_shard_cli_precedence_flag_over_env_over_file_over_default(world, tmp_path, monkeypatch):
    cfg = tmp_path / "shard.json"
    cfg.write_text(json.dumps({"index": str(world["root"] / "a"), "shard": 1, "max-concurrent": 5,
                               "workers": 3}))
    base = ["serve", "shard", "--config", str(cfg)]
    res, srv = _serve_once(monkeypatch, base)
    assert res.exit_code == 0, res.output
    assert srv.limits.max_concurrent == 5 and srv.service.shard_no == 1          # file
    res, srv = _serve_once(monkeypatch, base, {"FASTCTX_MAX_CONCURRENT": "7"})
    assert srv.limits.max_concurrent == 7                                        # env over file
    res, srv = _serve_once(monkeypatch, base + ["--max-concurrent", "9"], {"FASTCTX_MAX_CONCURRENT": "7"})
    assert srv.limits.max_concurrent == 9                                        # flag over env
    res, srv = _serve_once(monkeypatch, ["serve", "shard", "--index", str(world["root"] / "a"), "--shard", "0"],
                           {"FASTCTX_CONFIG": str(cfg)})
    assert srv.service.shard_no == 0 and srv.limits.max_concurrent == 5          # FASTCTX_CONFIG; flags win
    res, srv = _serve_once(monkeypatch, ["serve", "shard", "--index", str(world["root"] / "a"), "--shard", "0"])
    assert srv.limits.max_concurrent == 16                                       # default


def test_coordinator_engine_knobs_from_flag_env_and_file(world, tmp_path, monkeypatch):
    a0, a1 = world["servers"][("a", 0)], world["servers"][("a", 1)]
    cfg = tmp_path / "coordinator.json"
    cfg.write_text(json.dumps({"shard": [f"0={a0.address}", f"1={a1.address}"],
                               "param": ["seed_k=64", "relevance_mass=1.0"]}))
    res, srv = _serve_once(monkeypatch, ["serve", "coordinator", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    p = srv.coordinator.params
    assert (p.seed_k, p.relevance_mass, p.candidates) == (64, 1.0, AnswerParams().candidates)
    res, srv = _serve_once(monkeypatch, ["serve", "coordinator", "--config", str(cfg)],
                           {"FASTCTX_PARAM": "candidates=8"})
    assert srv.coordinator.params.candidates == 8 and srv.coordinator.params.seed_k == 1024   # env over file
    res = CliRunner().invoke(main, ["serve", "coordinator", "--shard", f"0={a0.address}", "--param", "seed_kk=1"])
    assert res.exit_code == 2 and "seed_kk" in res.output


@pytest.mark.parametrize("content, name, needle", [
    ('max-concurrent = 4\nmax-concurent = 5\n', "s.toml", "unknown key 'max-concurent'"),
    ('max-concurrent = "lots"\n', "s.toml", "key 'max-concurrent'"),
    ('max-concurrent = 0\n', "s.toml", "key 'max-concurrent'"),
    ('index = "no/such/dir"\n', "s.toml", "key 'index'"),
    ('port = [1, 2]\n', "s.toml", "key 'port'"),
    ('shard = 0\nport = \n', "s.toml", "not valid TOML"),
    ('[1, 2]', "s.json", "expected a table"),
    ('{"log-format": "xml"}', "s.json", "key 'log-format'"),
])
def test_config_file_errors_name_the_key_and_the_file(tmp_path, content, name, needle):
    if name.endswith(".toml") and tomllib is None:
        pytest.skip("reading TOML needs Python 3.11+")
    cfg = tmp_path / name
    cfg.write_text(content)
    res = CliRunner().invoke(main, ["serve", "shard", "--config", str(cfg), "--index", str(tmp_path),
                                    "--shard", "0"])
    assert res.exit_code == 2, res.output
    assert needle in res.output and str(cfg) in res.output
    assert "Traceback" not in res.output


def test_bad_environment_value_names_the_variable(tmp_path):
    res = CliRunner().invoke(main, ["serve", "shard", "--index", str(tmp_path), "--shard", "0"],
                             env={"FASTCTX_PORT": "seventy"})
    assert res.exit_code == 2 and "FASTCTX_PORT" in res.output and "seventy" in res.output


def test_metrics_flag_without_package_through_cli(world, monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    res = CliRunner().invoke(main, ["serve", "shard", "--index", str(world["root"] / "a"), "--shard", "0",
                                    "--metrics-port", "0"])
    assert res.exit_code == 1 and "pip install 'fastctx[metrics]'" in res.output


# ------------------------------------------------------------------------------------ builds
def test_coordinator_refuses_a_shard_of_another_build(world):
    b1 = world["servers"][("b", 1)]
    with pytest.raises(BuildMismatchError, match=rf"shard 1 at {b1.address} serves build {b1.build}"):
        _coordinator(world, {0: [("a", 0)], 1: [("b", 1)]})


def test_coordinator_refuses_a_replica_of_another_build(world):
    b0 = world["servers"][("b", 0)]
    with pytest.raises(BuildMismatchError) as e:
        _coordinator(world, {0: [("a", 0), ("b", 0)], 1: [("a", 1)]})
    assert f"shard 0 at {b0.address} serves build {b0.build}" in str(e.value)
    assert world["servers"][("a", 0)].address not in str(e.value)       # only the odd one is named


def test_coordinator_refuses_a_server_of_another_shard_number(world):
    a1 = world["servers"][("a", 1)]
    with pytest.raises(BuildMismatchError, match=rf"{a1.address} serves shard 1, not shard 0"):
        _coordinator(world, {0: [("a", 1)], 1: [("a", 1)]})


def test_one_build_is_accepted_and_reports_its_identity(world, tmp_path):
    a0 = world["servers"][("a", 0)]
    again = ShardServer(world["root"] / "a-again", 0, port=0).start()   # the same corpus rebuilt: same build
    try:
        assert again.build == a0.build != world["servers"][("b", 0)].build
        srv = _coordinator(world, {0: [("a", 0), again.address], 1: [("a", 1)]})
        try:
            with connect(srv.address) as c:
                assert c.stats()["build"] == a0.build
        finally:
            srv.stop(0)
            srv.coordinator.close()
    finally:
        again.stop(0)


def _until(cond, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.05)


def test_a_replica_that_comes_back_on_another_build_is_set_aside(world):
    addr = _dead_address()
    port = int(addr.rsplit(":", 1)[1])
    good = ShardServer(world["root"] / "a", 1, port=0).start()
    srv = _coordinator(world, {0: [("a", 0)], 1: [good.address, addr]}, metrics_port=0, build_check_s=0.1)
    late = None
    try:
        assert len(srv.unchecked) == 1 and srv.watch.refused() == []     # down at start: not checked yet
        late = ShardServer(world["root"] / "b", 1, port=port).start()    # comes up serving another build
        _until(lambda: srv.watch.refused() == [addr])
        assert _value(_scrape(srv.obs.metrics_address), "fastctx_refusals_total", reason="build") == 1
        good.stop(0)
        with connect(srv.address) as c:
            ans = c.query(world["q"][0])
        assert ans.partial and ans.missing_shards == [1]                  # never answered by build b
        late.stop(0)
        late = ShardServer(world["root"] / "a", 1, port=port).start()    # the right build on that address
        _until(lambda: srv.watch.refused() == [])
        with connect(srv.address) as c:
            assert not c.query(world["q"][0]).partial
    finally:
        for s in (good, late):
            if s is not None:
                s.stop(0)
        srv.stop(0)
        srv.coordinator.close()


def test_cli_coordinator_refuses_mixed_builds(world):
    a0, b1 = world["servers"][("a", 0)], world["servers"][("b", 1)]
    res = CliRunner().invoke(main, ["serve", "coordinator", "--shard", f"0={a0.address}",
                                    "--shard", f"1={b1.address}"])
    assert res.exit_code == 1 and "refusing to mix builds" in res.output and b1.address in res.output
    # the same shards from FASTCTX_SHARD (a repeatable flag: values separated by spaces)
    res = CliRunner().invoke(main, ["serve", "coordinator"], env={"FASTCTX_SHARD": f"0={a0.address} 1={b1.address}"})
    assert res.exit_code == 1 and "refusing to mix builds" in res.output and b1.address in res.output


# ------------------------------------------------------------------------------------ the wire document
WIRE_DOC = Path(__file__).resolve().parent.parent / "docs" / "WIRE.md"


def _doc_sections() -> dict:
    """{"fastctx.Shard/Search": section text} of docs/WIRE.md."""
    parts = WIRE_DOC.read_text().split("\n### ")
    return {p.split("\n", 1)[0].strip(): p for p in parts[1:]}


def _doc_examples() -> list:
    import base64
    import re

    def unbin(o):
        if isinstance(o, dict):
            return base64.b64decode(o["$bin"]) if set(o) == {"$bin"} else {k: unbin(v) for k, v in o.items()}
        return [unbin(x) for x in o] if isinstance(o, list) else o
    found = re.findall(r"<!-- example: (\S+) -->\s*```json\n(.*?)```", WIRE_DOC.read_text(), re.S)
    return [(method, unbin(json.loads(body))) for method, body in found]


def test_wire_doc_names_every_method_and_field(world):
    from fastctx.shards.server import COORD_SERVICE
    sections = _doc_sections()
    coord = _coordinator(world, {0: [("a", 0)], 1: [("a", 1)]})
    try:
        served = {"fastctx.Shard": (world["servers"][("a", 0)].method_names, wire.SHARD_SCHEMAS),
                  COORD_SERVICE: (coord.method_names, wire.COORD_SCHEMAS)}
    finally:
        coord.stop(0)
        coord.coordinator.close()
    examples = {m for m, _ in _doc_examples()}
    for service, (methods, schemas) in served.items():
        assert set(methods) == set(schemas)
        for m in methods:
            name = f"{service}/{m}"
            assert name in sections, f"docs/WIRE.md has no section '### {name}'"
            assert name in examples, f"docs/WIRE.md has no example request for {name}"
            fields = ["v", *schemas[m][0]] + (list(wire.EXPAND_PARAMS) if m == "Expand" else [])
            missing = [f for f in fields if f"`{f}`" not in sections[name]]
            assert not missing, f"{name}: request fields not documented: {missing}"
    assert wire.SCHEMA_VERSION == 1 and "schema version 1" in WIRE_DOC.read_text()


def test_wire_doc_examples_are_accepted_by_real_servers(world):
    import msgpack
    sections = _doc_sections()
    coord = _coordinator(world, {0: [("a", 0)], 1: [("a", 1)]})
    shards = [world["servers"][("a", k)] for k in range(2)]
    try:
        examples = _doc_examples()
        assert len(examples) >= 6
        for method, req in examples:
            data = msgpack.packb(req, use_bin_type=True)          # as any msgpack library would
            targets = [coord] if method.startswith("fastctx.Coordinator/") else shards
            replies, refusals = [], []
            for srv in targets:
                with grpc.insecure_channel(srv.address) as ch:
                    try:
                        replies.append(wire.decode(ch.unary_unary(f"/{method}")(data, timeout=10)))
                    except grpc.RpcError as e:
                        refusals.append((e.code(), e.details()))
            assert replies, f"{method}: every server refused the doc's example: {refusals}"
            for code, details in refusals:      # a row example is accepted by the shard owning the row
                assert code == grpc.StatusCode.INVALID_ARGUMENT and "is not on shard" in details, (method, details)
            keys = set(replies[0]) | {k for ev in replies[0].get("events", []) for k in ev}
            undocumented = sorted(k for k in keys if f"`{k}`" not in sections[method])
            assert not undocumented, f"{method}: reply fields not documented: {undocumented}"
        assert msgpack.packb({"v": 1}).hex(" ") == "81 a1 76 01"
        assert msgpack.packb({"v": 1, "k": 3, "words": ["service:s1"]}).hex(" ") in WIRE_DOC.read_text()
    finally:
        coord.stop(0)
        coord.coordinator.close()


def test_text_access_log_and_level(world):
    import io
    from fastctx.shards.metrics import configure_logging
    srv = world["servers"][("b", 1)]
    stub = grpc.insecure_channel(srv.address).unary_unary("/fastctx.Shard/Stats")
    buf = io.StringIO()
    configure_logging("text", "info", stream=buf)
    stub(wire.encode({"v": 1}), timeout=5)
    line = [x for x in buf.getvalue().splitlines() if "fastctx.access" in x][-1]
    assert "method=Stats" in line and "status=OK" in line and "peer=ipv4:127.0.0.1:" in line
    quiet = io.StringIO()
    configure_logging("json", "warning", stream=quiet)
    stub(wire.encode({"v": 1}), timeout=5)
    assert "fastctx.access" not in quiet.getvalue()


@needs_toml
def test_sharded_doc_config_example_uses_known_keys():
    import re
    doc = (WIRE_DOC.parent / "SHARDED.md").read_text()
    example = tomllib.loads(re.search(r"```toml\n(.*?)```", doc, re.S).group(1))
    cmd = main.commands["serve"].commands["coordinator"]
    from fastctx.shards.config import flag_name
    known = {flag_name(p) for p in cmd.params}
    assert example and set(example) <= known
