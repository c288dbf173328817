"""Big models (issue 14): a model past common.models.ISOLATED_CHECK_BYTES is stored and checked
off the controller's loop and the worker's heartbeat thread (the check in a child process), while
another model keeps serving; a large corrupt file is refused with its reason, and nobody is lost."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench.models import mlp_onnx
from bench.procs import WorkerSpec, cluster
from client import Client, RequestError
from common.models import ISOLATED_CHECK_BYTES
from common.status import Status

pytestmark = pytest.mark.timeout(180)


def big_matmul(n: int) -> bytes:
    """y = x @ W with W n x n float32: 4 n^2 bytes of weights."""
    weights = numpy_helper.from_array(np.random.default_rng(0).random((n, n), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_a_large_model_is_checked_off_the_loops_while_another_model_serves(tmp_path):
    blob = big_matmul(3200)  # 41 MB
    assert len(blob) > ISOLATED_CHECK_BYTES
    with cluster(tmp_path, [WorkerSpec("cpu", "onnxruntime")], log_level="info",
                 controller_settings=["max_model_bytes=200000000"]) as c:
        with Client(c.client_endpoint, timeout_s=120) as admin:
            admin.upload(mlp_onnx(), "small")
            x = {"x": np.zeros((1, 64), np.float32)}
            outcomes, stop = [], threading.Event()

            def serve():  # another model's traffic throughout the upload
                with Client(c.client_endpoint, timeout_s=30) as client:
                    while not stop.is_set():
                        outcomes.append(client.infer("small", x, slo_ms=1000).outputs["y"].shape)

            server = threading.Thread(target=serve)
            server.start()
            try:
                info = admin.upload(blob, "big")
                with pytest.raises(RequestError) as refused:
                    admin.upload(b"\x08\x07" + bytes(len(blob)), "corrupt")
            finally:
                stop.set()
                server.join()
            assert info["prepared_on"] == ["cpu"] and info["inputs"][0]["shape"] == [3200]
            assert refused.value.status is Status.BAD_MODEL and "not a valid ONNX model" in refused.value.detail
            y = admin.infer("big", {"x": np.ones((1, 3200), np.float32)}, slo_ms=5000).outputs["y"]
            assert y.shape == (1, 3200)
            counters = admin.status()["counters"]
            assert counters.get("workers_lost", 0) == 0 and counters["workers_joined"] == 1
            assert [m["name"] for m in admin.list()] == ["big", "small"]  # the corrupt one left nothing
        assert outcomes and all(shape == (1, 10) for shape in outcomes)
        log = (c.group.log_dir / "controller.log").read_text()
        assert log.count("checking a large model") == 2
