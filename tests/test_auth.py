"""Authenticated cluster hops: TLS and mutual TLS on shard servers, TLS and bearer tokens on the
coordinator, principals that come from the token and can only be narrowed, loopback-only
plaintext binds, and the CLI. Real certificates made here with the `openssl` binary, real gRPC
servers on 127.0.0.1."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from conftest import make_records, query_vectors_near, server_address, write_corpus

from fastctx.auth import (AuthError, SecurityConfigError, TokenTable, bearer, check_bind, effective_principals,
                          is_loopback)
from fastctx.index import build
from fastctx.shards import wire
from fastctx.shards.coordinator import Coordinator
from fastctx.shards.server import CoordinatorServer, ShardServer, connect
from fastctx.shards.transport import remote_cluster

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl binary")

TOKEN_A = "tok-a-0123456789abcdef"          # principals user:ana, group:payments
TOKEN_B = "tok-b-0123456789abcdef"          # principals user:bo


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed(d: Path, ca: str, name: str, cn: str, san: str = "") -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={cn}", cwd=d)
    ext = []
    if san:
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        ext = ["-extfile", f"{name}.ext"]
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "2", *ext, cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for localhost/127.0.0.1, a client certificate from the CA, and
    a client certificate from another (rogue) CA."""
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "rogue"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                 "-days", "2", "-subj", f"/CN={ca}", cwd=d)
    _signed(d, "ca", "server", "localhost", "DNS:localhost,IP:127.0.0.1")
    _signed(d, "ca", "client", "coordinator")
    _signed(d, "rogue", "intruder", "intruder")
    return d


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    recs, vecs, _, centers = make_records(600, seed=5, dim=16, n_buckets=30)
    for r in recs:          # access lists: a third for group:payments, a third for user:bo, a third open
        i = int(r["id"][1:])
        if i % 3 < 2:
            r["acl"] = [["group:payments"], ["user:bo"]][i % 3]
    write_corpus(root / "corpus", recs, vecs)
    build(root / "corpus", root / "two", shards=2)
    return {"root": root, "dir": root / "two", "queries": query_vectors_near(centers, 3, seed=6),
            "acl": {r["id"]: set(r.get("acl", ())) for r in recs}}


def _stats_call(address, credentials=None, timeout=5.0):
    ch = grpc.secure_channel(address, credentials) if credentials is not None else grpc.insecure_channel(address)
    try:
        return wire.decode(ch.unary_unary("/fastctx.Shard/Stats")(wire.encode({"v": 1}), timeout=timeout))
    finally:
        ch.close()


def _creds(pki, client: str | None = "client", ca: str = "ca"):
    return grpc.ssl_channel_credentials(
        root_certificates=(pki / f"{ca}.pem").read_bytes(),
        private_key=(pki / f"{client}.key").read_bytes() if client else None,
        certificate_chain=(pki / f"{client}.pem").read_bytes() if client else None)


# ------------------------------------------------------------------------------------ TLS
def test_plaintext_client_of_a_tls_shard_gets_nothing(world, pki):
    srv = ShardServer(world["dir"], 0, tls_cert=pki / "server.pem", tls_key=pki / "server.key").start()
    try:
        with pytest.raises(grpc.RpcError) as ei:
            _stats_call(srv.address)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
        got = _stats_call(srv.address, _creds(pki, client=None))      # a TLS client trusting the CA
        assert got["shard"] == 0
        with pytest.raises(grpc.RpcError):                              # ... but not one trusting another CA
            _stats_call(srv.address, _creds(pki, client=None, ca="rogue"))
    finally:
        srv.stop(0)


def test_mutual_tls_shard_refuses_clients_without_a_certificate_from_its_ca(world, pki):
    srv = ShardServer(world["dir"], 1, tls_cert=pki / "server.pem", tls_key=pki / "server.key",
                      tls_client_ca=pki / "ca.pem").start()
    try:
        for creds in (None, _creds(pki, client=None), _creds(pki, client="intruder")):
            with pytest.raises(grpc.RpcError) as ei:
                _stats_call(srv.address, creds)
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE, ei.value.details()
        assert _stats_call(srv.address, _creds(pki))["shard"] == 1
    finally:
        srv.stop(0)


def test_coordinator_over_mutual_tls_shards_answers_like_plaintext(world, pki):
    from fastctx.auth import channel_credentials
    tls = [ShardServer(world["dir"], k, tls_cert=pki / "server.pem", tls_key=pki / "server.key",
                       tls_client_ca=pki / "ca.pem").start() for k in range(2)]
    plain = [ShardServer(world["dir"], k).start() for k in range(2)]
    creds = channel_credentials(pki / "ca.pem", pki / "client.pem", pki / "client.key")
    # generous per-call limits: a first call (handshake, kernels loaded) on a loaded machine can
    # pass the 2 s default, and this test is about what TLS answers, not how fast
    slow = {"call_timeout_s": 30.0, "hedge_s": None}
    c_tls = Coordinator(remote_cluster({k: [s.address] for k, s in enumerate(tls)}, credentials=creds, **slow),
                        deadline_s=60.0)
    c_plain = Coordinator(remote_cluster({k: [s.address] for k, s in enumerate(plain)}, **slow), deadline_s=60.0)
    c_nocert = Coordinator(remote_cluster({k: [s.address] for k, s in enumerate(tls)},
                                          credentials=channel_credentials(pki / "ca.pem")), deadline_s=2.0)
    try:
        for q in world["queries"]:
            a, b = (c.query(q, type="chain", direction="both", principals=["user:bo"]) for c in (c_tls, c_plain))
            assert not a.partial and [e.id for e in a.events] == [e.id for e in b.events] and a.events
        with pytest.raises(Exception):          # no client certificate: no shard answers
            c_nocert.query(world["queries"][0], principals=["user:bo"])
    finally:
        for c in (c_tls, c_plain, c_nocert):
            c.close()
        for s in tls + plain:
            s.stop(0)


def test_plaintext_binds_loopback_only_unless_insecure(world, pki):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("[::1]") and is_loopback("127.3.2.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.7") and not is_loopback("example.com")
    with pytest.raises(SecurityConfigError, match="--insecure"):
        check_bind("0.0.0.0", tls=False, insecure=False)
    check_bind("0.0.0.0", tls=True, insecure=False)
    check_bind("0.0.0.0", tls=False, insecure=True)
    with pytest.raises(SecurityConfigError, match="plaintext"):
        ShardServer(world["dir"], 0, host="0.0.0.0")
    with pytest.raises(SecurityConfigError, match="plaintext"):
        CoordinatorServer(Coordinator(remote_cluster({0: ["127.0.0.1:1"]})), host="0.0.0.0")
    srv = ShardServer(world["dir"], 0, host="0.0.0.0", tls_cert=pki / "server.pem", tls_key=pki / "server.key")
    srv.stop(0)


def test_bad_certificate_files_give_clear_errors(world, pki, tmp_path):
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(SecurityConfigError, match="junk.pem.*not a PEM"):
        ShardServer(world["dir"], 0, tls_cert=tmp_path / "junk.pem", tls_key=pki / "server.key")
    with pytest.raises(SecurityConfigError, match="missing.pem"):
        ShardServer(world["dir"], 0, tls_cert=tmp_path / "missing.pem", tls_key=pki / "server.key")
    with pytest.raises(SecurityConfigError, match="both"):
        ShardServer(world["dir"], 0, tls_cert=pki / "server.pem")
    with pytest.raises(SecurityConfigError, match="mutual TLS is TLS"):
        ShardServer(world["dir"], 0, tls_client_ca=pki / "ca.pem")


# ------------------------------------------------------------------------------------ tokens
def test_token_table_validation_and_lookup(tmp_path):
    f = tmp_path / "tokens.json"
    for content, match in (("[1, 2]", "JSON object"), ("{", "not valid JSON"), ('{"short": ["user:a"]}', "16"),
                           (json.dumps({TOKEN_A: "user:ana"}), "list of non-empty strings"),
                           (json.dumps({TOKEN_A: ["", "x"]}), "list of non-empty strings"),
                           ("[" * 100_000, "not valid JSON")):
        f.write_text(content)
        with pytest.raises(SecurityConfigError, match=match) as ei:
            TokenTable.load(f)
        assert "tok-a" not in str(ei.value)       # a token never appears in an error
    with pytest.raises(SecurityConfigError, match="not found"):
        TokenTable.load(tmp_path / "nope.json")
    f.write_text(json.dumps({TOKEN_A: ["user:ana", "group:payments"], TOKEN_B: ["user:bo"]}))
    t = TokenTable.load(f)
    assert len(t) == 2 and t.lookup(TOKEN_A) == ("user:ana", "group:payments") and t.lookup(TOKEN_B) == ("user:bo",)
    assert t.lookup(TOKEN_A[:-1]) is None and t.lookup(TOKEN_A + "x") is None and t.lookup("") is None
    assert t.lookup(None) is None
    assert bearer([("authorization", f"Bearer {TOKEN_A}")]) == TOKEN_A
    assert bearer([("authorization", f"Basic {TOKEN_A}")]) is None and bearer([]) is None


def test_requests_can_only_narrow_the_tokens_principals():
    held = ("user:ana", "group:payments")
    assert effective_principals(held, None) == held
    assert effective_principals(held, ["group:payments"]) == ("group:payments",)
    assert effective_principals(held, ["group:payments", "group:admins"]) == ("group:payments",)
    with pytest.raises(AuthError) as ei:
        effective_principals(held, ["group:admins"])
    assert ei.value.code == "PERMISSION_DENIED"


class RecordingCoordinator(Coordinator):
    """A real coordinator that also records the query spec each query reaches it with."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.specs: list[dict] = []

    def query_spec(self, spec, vector=None, **kw):
        self.specs.append({**spec, **{k: v for k, v in kw.items() if k == "deadline_s"}})
        return super().query_spec(spec, vector, **kw)


@pytest.fixture(scope="module")
def token_cluster(world, pki, tmp_path_factory):
    tokens = tmp_path_factory.mktemp("tok") / "tokens.json"
    tokens.write_text(json.dumps({TOKEN_A: ["user:ana", "group:payments"], TOKEN_B: ["user:bo"]}))
    shards = [ShardServer(world["dir"], k).start() for k in range(2)]
    coord = RecordingCoordinator(remote_cluster({k: [s.address] for k, s in enumerate(shards)}, call_timeout_s=30.0))
    srv = CoordinatorServer(coord, tls_cert=pki / "server.pem", tls_key=pki / "server.key", tokens=tokens).start()
    yield {"srv": srv, "coord": coord, "tokens": tokens, "shards": shards}
    srv.stop(0)
    coord.close()
    for s in shards:
        s.stop(0)


def test_coordinator_requires_a_known_token_and_logs_refusals_without_it(world, pki, token_cluster, caplog):
    addr, q = token_cluster["srv"].address, world["queries"][0]
    caplog.set_level(logging.WARNING, logger="fastctx.server")
    for token in (None, "tok-z-0123456789abcdef"):
        with connect(addr, ca=pki / "ca.pem", token=token) as c:
            for call in (c.stats, lambda: c.query(q)):
                with pytest.raises(AuthError) as ei:
                    call()
                assert ei.value.code == "UNAUTHENTICATED"
    assert "refused" in caplog.text and "tok-z" not in caplog.text and TOKEN_A not in caplog.text
    with connect(addr, ca=pki / "ca.pem", token=TOKEN_A) as c:    # a token that disagrees with the request
        with pytest.raises(AuthError) as ei:
            c.query(q, principals=["user:bo"])
        assert ei.value.code == "PERMISSION_DENIED"
    with pytest.raises(grpc.RpcError) as ei:                          # plaintext to a TLS coordinator
        ch = grpc.insecure_channel(addr)
        ch.unary_unary("/fastctx.Coordinator/Stats")(wire.encode({"v": 1}), timeout=5,
                                                     metadata=(("authorization", f"Bearer {TOKEN_A}"),))
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE


def test_principals_come_from_the_token_and_requests_only_narrow_them(world, pki, token_cluster):
    addr, q, coord = token_cluster["srv"].address, world["queries"][0], token_cluster["coord"]
    cases = [(TOKEN_A, None, ["user:ana", "group:payments"]),
             (TOKEN_A, ["group:payments"], ["group:payments"]),
             (TOKEN_A, ["group:payments", "group:admins", "user:bo"], ["group:payments"]),   # asks for more
             (TOKEN_B, None, ["user:bo"])]
    for token, asked, want in cases:
        with connect(addr, ca=pki / "ca.pem", token=token) as c:
            assert c.stats()["n_shards"] == 2
            ans = c.query(q, type="chain", principals=asked)
        assert coord.specs[-1]["principals"] == want, (token[:5], asked)
        assert ans.events and not ans.partial
        shown = [e.id for e in ans.events] + ([ans.current.id] if ans.current else [])
        assert all(not world["acl"][i] or world["acl"][i] & set(want) for i in shown), (token[:5], asked)
        assert any(world["acl"][i] for i in shown)      # restricted events the asker may see do appear
    # query_spec (what eval --remote sends): the spec's principals are narrowed the same way
    with connect(addr, ca=pki / "ca.pem", token=TOKEN_B) as c:
        c.query_spec({"type": "chain", "principals": ["user:bo", "group:everyone"], "budget_tokens": 500}, q)
    assert coord.specs[-1]["principals"] == ["user:bo"]


def test_without_tokens_an_index_with_access_lists_needs_principals(world, token_cluster):
    shards = token_cluster["shards"]
    coord = Coordinator(remote_cluster({k: [s.address] for k, s in enumerate(shards)}, call_timeout_s=30.0))
    srv = CoordinatorServer(coord).start()
    try:
        with connect(srv.address) as c:
            with pytest.raises(AuthError) as ei:
                c.query(world["queries"][0])
            assert ei.value.code == "PERMISSION_DENIED" and "principals" in str(ei.value)
            ans = c.query(world["queries"][0], principals=["user:bo"])
            assert all(world["acl"][e.id] <= {"user:bo"} for e in ans.events)
    finally:
        srv.stop(0)
        coord.close()


def test_client_refuses_to_send_a_token_in_plaintext_off_loopback():
    with pytest.raises(SecurityConfigError, match="plaintext"):
        connect("10.9.8.7:7000", token=TOKEN_A)
    connect("10.9.8.7:7000", token=TOKEN_A, insecure=True).close()
    connect("127.0.0.1:7000", token=TOKEN_A).close()


# ------------------------------------------------------------------------------------ CLI
def test_cli_bad_security_options_give_clear_errors(world, pki, tmp_path):
    from click.testing import CliRunner
    from fastctx.cli import main
    bad = tmp_path / "tokens.json"
    bad.write_text('{"short": ["user:a"]}')
    runs = [(["serve", "coordinator", "--shard", "0=127.0.0.1:1", "--tokens", str(bad)], "at least 16"),
            (["serve", "coordinator", "--shard", "0=127.0.0.1:1", "--host", "0.0.0.0"], "--insecure"),
            (["serve", "shard", "--index", str(world["dir"]), "--shard", "0", "--tls-client-ca", str(pki / "ca.pem")],
             "mutual TLS"),
            (["serve", "shard", "--index", str(world["dir"]), "--shard", "0", "--tls-cert", str(pki / "ca.key"),
              "--tls-key", str(pki / "server.key")], "CERTIFICATE"),
            (["serve", "shard", "--index", str(world["dir"]), "--shard", "0", "--tls-cert", str(pki / "server.pem"),
              "--tls-key", str(pki / "client.key")], "certificate and key"),
            (["query", "--remote", "10.1.2.3:7000", "--token", TOKEN_A, "anything"], "plaintext"),
            (["query", "--remote", "127.0.0.1:7000"], "TEXT")]
    for args, match in runs:
        r = CliRunner().invoke(main, args)
        assert r.exit_code != 0 and not isinstance(r.exception, (AttributeError, TypeError, KeyError)), (args, r.output)
        assert match is None or match in r.output, (args, r.output)


_wait_listening = server_address


@pytest.mark.slow
def test_cli_tls_tokens_and_remote_eval(text_corpus, pki, tmp_path):
    exe = str(Path(sys.executable).parent / "fastctx")
    idx = tmp_path / "idx"
    subprocess.run([exe, "build", str(text_corpus.dir), str(idx), "--shards", "2", "--quiet"], check=True,
                   capture_output=True, timeout=120)
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({TOKEN_A: ["user:ana"]}))
    r = subprocess.run([exe, "serve", "shard", "--index", str(idx), "--shard", "0", "--host", "0.0.0.0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--insecure" in r.stderr and "Traceback" not in r.stderr
    tls = ["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")]
    procs = []
    try:
        addrs = []
        for k in range(2):
            p = subprocess.Popen([exe, "serve", "shard", "--index", str(idx), "--shard", str(k), *tls,
                                  "--tls-client-ca", str(pki / "ca.pem")], stderr=subprocess.PIPE, text=True)
            procs.append(p)
            addrs.append(_wait_listening(p, "serving on"))
        p = subprocess.Popen([exe, "serve", "coordinator", "--shard", f"0={addrs[0]}", "--shard", f"1={addrs[1]}",
                              *tls, "--tokens", str(tokens), "--shard-ca", str(pki / "ca.pem"),
                              "--client-cert", str(pki / "client.pem"), "--client-key", str(pki / "client.key")],
                             stderr=subprocess.PIPE, text=True)
        procs.append(p)
        coord = _wait_listening(p, "serving on").replace("127.0.0.1", "localhost")
        out = tmp_path / "r.jsonl"
        base = [exe, "eval", "--remote", coord, str(text_corpus.dir), "--out", str(out), "--quiet",
                "--ca", str(pki / "ca.pem")]
        r = subprocess.run(base, capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and "UNAUTHENTICATED" in r.stderr and "Traceback" not in r.stderr
        r = subprocess.run(base + ["--token", "tok-wrong-0123456789"], capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and "UNAUTHENTICATED" in r.stderr
        r = subprocess.run(base + ["--token", TOKEN_A], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        got = [json.loads(x) for x in out.read_text().splitlines()]
        assert got and all(g["events"] for g in got)
        r = subprocess.run([exe, "query", "--remote", coord, "--ca", str(pki / "ca.pem"), "--type", "current",
                            "what is the payments retry limit decision", "--json"],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "FASTCTX_TOKEN": TOKEN_A})
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["current"] == "d2"
        r = subprocess.run([exe, "query", "--remote", coord, "--ca", str(pki / "ca.pem"), "--token", TOKEN_A,
                            "--principal", "group:admins", "retry limit"], capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and "PERMISSION_DENIED" in r.stderr
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
