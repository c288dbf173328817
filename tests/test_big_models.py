"""Big models (issue 14): a model past common.models.ISOLATED_CHECK_BYTES is stored and checked
off the controller's loop and the worker's heartbeat thread (the check in a child process), while
another model keeps serving; a large corrupt file is refused with its reason, and nobody is lost."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from clockwork.bench.models import matmul_onnx, mlp_onnx
from clockwork.bench.procs import WorkerSpec, cluster
from clockwork.client import Client, RequestError
from clockwork.common.models import ISOLATED_CHECK_BYTES
from clockwork.common.status import Status

pytestmark = pytest.mark.timeout(180)


def test_a_large_model_is_checked_off_the_loops_while_another_model_serves(tmp_path):
    blob = matmul_onnx(3200)  # 41 MB
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


def test_a_model_over_the_chunk_size_travels_in_chunks_with_progress_and_a_hash_check(tmp_path, capsys):
    from clockwork.client import cli
    from clockwork.client.protocol import UPLOAD_CHUNK_BYTES, build_upload
    from clockwork.common.codec import decode
    from clockwork.common.net import dealer, recv_frames, send

    blob = matmul_onnx(2300)  # 21 MB: three chunks
    assert 2 * UPLOAD_CHUNK_BYTES < len(blob) < ISOLATED_CHECK_BYTES
    path = tmp_path / "matmul.onnx"
    path.write_bytes(blob)
    with cluster(tmp_path / "run", [WorkerSpec("cpu", "onnxruntime")],
                 controller_settings=["max_model_bytes=200000000"]) as c:
        assert cli.main(["--endpoint", c.client_endpoint, "upload", str(path)]) == 0
        out, err = capsys.readouterr()
        assert out.startswith("name:        matmul")
        assert err == "uploading: 39% (8 of 21 MB)\nuploading: 79% (17 of 21 MB)\nuploaded; the workers have prepared it\n"
        with Client(c.client_endpoint, timeout_s=60) as client:
            y = client.infer("matmul", {"x": np.ones((1, 2300), np.float32)}, slo_ms=5000).outputs["y"]
            assert y.shape == (1, 2300)

        sock = dealer(__import__("zmq").Context.instance(), c.client_endpoint)
        try:
            def chunk(msg_id, offset, data, sha="0" * 64, total=1000):
                send(sock, build_upload("forged", data, offset=offset, total_bytes=total, sha256=sha), msg_id)
                assert sock.poll(30_000)
                return decode(recv_frames(sock)).body

            assert chunk(1, 0, b"a" * 600).body == {"received": 600}
            skipped = chunk(2, 700, b"b" * 300)  # not where the last one ended
            assert skipped.status is Status.BAD_INPUT and "600 of 1000 were expected next" in skipped.detail
            assert chunk(3, 0, b"a" * 600).body == {"received": 600}
            forged = chunk(4, 600, b"b" * 400)  # whole, but not the announced sha256
            assert forged.status is Status.BAD_INPUT and "not the" in forged.detail and "announced" in forged.detail
            orphan = chunk(5, 600, b"b" * 400)
            assert orphan.status is Status.BAD_INPUT and "send its first chunk" in orphan.detail
        finally:
            sock.close(0)
        with Client(c.client_endpoint) as client:
            assert [m["name"] for m in client.list()] == ["matmul"]
        assert not list((c.state_dir / "incoming").iterdir())  # nothing left staged


def test_the_big_model_benchmark_measures_each_figure(tmp_path):
    """clockwork-bench big-model end to end, small: a 64 MiB model of 16 layers uploaded by the real
    CLI while other models serve; the report has the SLO share with and without it, lost workers,
    and each process's peak RSS against the model's size."""
    import json

    from clockwork.bench import big_model

    code = big_model.main(["--size", "1024", "--layers", "16", "--duration-s", "3", "--rate", "100",
                           "--out", str(tmp_path)])
    report = json.loads((tmp_path / "big-model.json").read_text())
    assert code in (0, 1) and report["model_bytes"] > 16 * 2**20
    # Both runs served (the 0.1-point verdict on the upload's cost is the benchmark's: on a host
    # twice as busy, 7 of 301 requests were refused in the run without the upload).
    assert report["share_without"] > 0.5 and report["share_with"] > 0.5 and report["workers_lost"] == 0
    assert len(report["big_exec_ms"]) == 3 and all(ms > 0 for ms in report["big_exec_ms"])
    assert set(report["peak_rss_mib"]) == {"controller", "worker", "cli"}
    assert set(report["peak_anon_mib"]) == {"controller", "worker"}
    assert [v[0] for v in report["verdicts"]][:2] == ["other models within SLO, points lost to the upload",
                                                      "workers declared lost"]
