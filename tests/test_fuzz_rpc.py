"""RPC fuzz (bounded to a few seconds): mutated shard and coordinator requests sent as bytes to
real servers on loopback end in a result or a refusal naming the problem, never INTERNAL or a
hang. The generator lives in bench/fuzz_rpc.py, which runs it longer."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from fastctx.shards import wire

_spec = importlib.util.spec_from_file_location("fuzz_rpc", Path(__file__).resolve().parents[1] / "bench" / "fuzz_rpc.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory):
    f = fuzz.RpcFuzzer(fuzz.make_index(tmp_path_factory.mktemp("fuzz-rpc")), seed=3)
    yield f
    f.close()


def test_hand_made_requests_are_refused_by_name(fuzzer):
    """A schema version that is an array, per-entity searches mixed with other asks, too many
    names: each a refusal naming the field."""
    v = np.ones((1, fuzz.DIM), np.float32)
    call = fuzzer.channels["shard"].unary_unary("/fastctx.Shard/Search")
    for req, says in (({"v": np.ones(2), "vectors": v, "k": 3}, "'v'"),
                      ({"v": 1, "vectors": v, "k": 3, "per_entity": ["person:p1"], "reach": 2}, "per_entity"),
                      ({"v": 1, "vectors": v, "k": 3, "per_entity": ["person:p1"] * 65}, "per_entity")):
        with pytest.raises(fuzzer.grpc.RpcError) as ei:
            call(wire.encode(req), timeout=10)
        assert ei.value.code().name == "INVALID_ARGUMENT" and says in ei.value.details(), ei.value.details()


def test_mutated_requests_never_fail_inside_a_server(fuzzer):
    fuzzer.run(8.0)
    assert fuzzer.tried > 500
    assert not fuzzer.unexpected, list(fuzzer.unexpected.items())[:3]
