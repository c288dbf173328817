"""worker/runtimes/engine_build.py: TensorRT engines built in a child process, where
`[worker.tensorrt] build_on` says, or ahead of time by `clockwork build-engine`; and what a build
does to the EXEC lane of the GPU it runs on.

TensorRT and PyCUDA are the named fakes (tests/fake_tensorrt.py, tests/fake_pycuda.py). Each
build's child process gets the same fakes from their recipe; a build made slow with the fake's
`build_gate` runs until the test lets it finish, so the assertions are about order (EXECs finish
while the build still runs), never about durations.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from clockwork.client import cli
from clockwork.common.clock import monotonic_ns
from clockwork.common.config import TensorRTConfig
from clockwork.common.status import Status
from clockwork.common.tensors import Tensor
from clockwork.worker.device import Done
from clockwork.worker.runtimes.base import Profile, RuntimeUnavailable
from clockwork.worker.runtimes.engine_build import BuildActivity
from tests.test_tensorrt_runtime import A100, H200, add_one, failure, make_rig, mlp, prepare, reference, x_batch
from tests.worker_helpers import WorkerProcess, make_device, wait_until_true, window

pytestmark = pytest.mark.timeout(120)

KIND = "NVIDIA H200 sm90"
FAKE = 'tensorrt.libraries="tests.fake_tensorrt:fake_libraries"'  # for `clockwork build-engine`


def serving(rig, model_id: str = "a"):
    """The worker's device 0 (its real lanes), serving one prepared and loaded model."""
    device, emit, store = make_device(rig.runtime)
    device.start()
    store.add(model_id, prepare(rig.runtime, mlp(), model_id=model_id), Profile(1, {2: 1}))
    device.submit_load(1, model_id, *window())
    assert emit.for_parent(1).status is Status.OK
    return device, emit


def run_execs(device, emit, first_id: int, count: int, model_id: str = "a") -> list[Done]:
    for parent_id in range(first_id, first_id + count):
        device.submit_exec(parent_id, model_id, 2, (Tensor.from_array("x", x_batch(2)["x"]),), *window())
    return [emit.for_parent(parent_id) for parent_id in range(first_id, first_id + count)]


def execs_during_a_slow_build(rig, tmp_path: Path) -> tuple[list[Done], bool, list[Done]]:
    """EXECs while a second model's build waits at its gate, whether the build was still running
    when they had all completed, and EXECs after it finished."""
    device, emit = serving(rig)
    gate = tmp_path / "gate"
    rig.trt.build_gate = str(gate)
    builder = threading.Thread(target=lambda: prepare(rig.runtime, mlp(seed=1), model_id="b"))
    try:
        builder.start()
        wait_until_true(lambda: Path(f"{gate}.started").exists(), 60, "the build to start")
        during = run_execs(device, emit, 100, 5)
        still_building = builder.is_alive()
        gate.touch()
        builder.join(60)
        after = run_execs(device, emit, 200, 2)
    finally:
        gate.touch()
        device.stop()
    return during, still_building, after


def test_execs_complete_while_a_build_runs_in_a_child_and_are_marked_disturbed(tmp_path):
    rig = make_rig(tmp_path, lanes=False)
    try:
        during, still_building, after = execs_during_a_slow_build(rig, tmp_path)
    finally:
        rig.runtime.close()
    assert still_building  # every EXEC completed while the build was still running
    assert [d.status for d in during] == [Status.OK] * 5
    np.testing.assert_allclose(during[0].tensors[0].array(), reference(mlp(), x_batch(2))["y"], rtol=1e-6)
    assert all(d.disturbed for d in during)  # they shared the GPU with the build
    assert [d.disturbed for d in after] == [False, False]
    assert [(b.device_index, b.pid != os.getpid()) for b in rig.trt.builds] == [(0, True), (0, True)]


def test_a_build_on_another_gpu_of_the_kind_leaves_the_serving_gpu_undisturbed(tmp_path):
    rig = make_rig(tmp_path, gpus=[H200, {**H200, "pci_bus_id": "0000:18:00.0"}], devices=1, lanes=False,
                   settings=TensorRTConfig(build_on="gpu:1"))
    try:
        during, still_building, _ = execs_during_a_slow_build(rig, tmp_path)
    finally:
        rig.runtime.close()
    assert still_building and [d.status for d in during] == [Status.OK] * 5
    assert not any(d.disturbed for d in during)
    assert [b.device_index for b in rig.trt.builds] == [1, 1]


@pytest.mark.parametrize("gpus, build_on, match", [
    ([H200, A100], "gpu:1", "a plan runs only on the GPU kind that built it"),
    ([H200], "gpu:3", "no such GPU"),
])
def test_a_build_gpu_that_cannot_serve_the_kind_is_refused_at_start(tmp_path, gpus, build_on, match):
    with pytest.raises(RuntimeUnavailable, match=match):
        make_rig(tmp_path, gpus=gpus, devices=1, lanes=False, settings=TensorRTConfig(build_on=build_on))


def test_a_build_process_that_dies_fails_the_upload_and_the_worker_serves_on(tmp_path):
    rig = make_rig(tmp_path)
    try:
        handle = rig.load(prepare(rig.runtime, mlp(), model_id="a"))
        rig.trt.crash_next_build = True
        error = failure(lambda: prepare(rig.runtime, mlp(seed=1), model_id="b"))
        assert error.status is Status.RUNTIME_ERROR and "killed by SIGKILL" in error.detail
        outputs, _ = rig.execute(handle, x_batch(3))
        np.testing.assert_allclose(outputs["y"], reference(mlp(), x_batch(3))["y"], rtol=1e-6)
        again = prepare(rig.runtime, mlp(seed=1), model_id="b")  # nothing was cached: the next try builds
        assert again.extra["engine"][KIND]["source"] == "built"
    finally:
        rig.stop()


def test_a_build_past_its_timeout_is_stopped_with_a_reason(tmp_path):
    rig = make_rig(tmp_path, lanes=False, settings=TensorRTConfig(build_timeout_s=0.5))
    try:
        rig.trt.build_gate = str(tmp_path / "never")
        error = failure(lambda: prepare(rig.runtime, mlp()))
        assert error.status is Status.RUNTIME_ERROR and "build_timeout_s (0.5 s)" in error.detail
    finally:
        rig.stop()


def test_ahead_of_time_the_worker_uses_the_engine_build_engine_wrote(tmp_path, capsys):
    rig = make_rig(tmp_path, settings=TensorRTConfig(build_on="ahead"))
    try:
        error = failure(lambda: prepare(rig.runtime, mlp(), max_batch=8))
        assert error.status is Status.NOT_PREPARED and "clockwork build-engine" in error.detail
        assert rig.trt.builds == []  # the worker never builds

        path = tmp_path / "m.onnx"
        path.write_bytes(mlp())
        cache = f'engine_cache_dir="{tmp_path / "engines"}"'
        assert cli.main(["build-engine", str(path), "--gpu", "0", "--max-batch", "8", "--set", cache,
                         "--set", FAKE]) == 0
        out = capsys.readouterr().out
        assert f"{KIND}, TensorRT 10.3.0, batch 1..8" in out and ".plan" in out

        model = prepare(rig.runtime, mlp(), max_batch=8)
        assert model.extra["engine"][KIND]["source"] == "cache" and rig.trt.builds == []
        outputs, _ = rig.execute(rig.load(model), x_batch(8))
        np.testing.assert_allclose(outputs["y"], reference(mlp(), x_batch(8))["y"], rtol=1e-6)
    finally:
        rig.stop()


def test_build_engine_says_why_it_cannot_build(tmp_path, capsys):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"not an onnx model")
    assert cli.main(["build-engine", str(path), "--set", FAKE]) == 4  # bad input
    assert "BAD_MODEL" in capsys.readouterr().err
    path.write_bytes(mlp())
    assert cli.main(["build-engine", str(path), "--gpu", "5", "--set", FAKE,
                     "--set", f'engine_cache_dir="{tmp_path}"']) == 1  # the system failed: no GPU 5
    assert "cannot open GPU 5" in capsys.readouterr().err


def test_an_exec_is_disturbed_only_by_a_build_that_overlaps_it():
    activity = BuildActivity(devices=2)
    before = monotonic_ns() - 1
    with activity.running(0):
        during = monotonic_ns()
        assert activity.overlapped(0, during - 10, during)
        assert not activity.overlapped(1, during - 10, during)  # another GPU
    after = monotonic_ns() + 1
    assert activity.overlapped(0, before - 10, after)  # spans the whole build
    assert not activity.overlapped(0, before - 100, before)  # ended before it began
    assert not activity.overlapped(0, after, after + 100)  # began after it ended
    with activity.running(None), activity.running(7):  # no GPU, or one not served here: nothing marked
        assert not activity.overlapped(1, before, monotonic_ns())


def test_a_worker_process_builds_in_children_and_serves_engines_built_ahead(tmp_path):
    """Real processes: workers (tensorrt runtime on the named fakes, set by configuration), their
    build children, and `clockwork build-engine` run as a command."""
    path = tmp_path / "m.onnx"
    path.write_bytes(mlp())
    serving = WorkerProcess(tmp_path, "--runtime", "tensorrt", "--set", FAKE,
                            "--set", f'engine_cache_dir="{tmp_path / "serving"}"').start()
    try:
        assert serving.ctl.prepare("m", mlp(), max_batch=8).body.status is Status.OK  # built by a child
        bad = serving.ctl.prepare("f64", add_one("float64")).body
        assert bad.status is Status.BAD_MODEL and "unsupported data type" in bad.detail
        assert serving.ctl.load(0, "m").body.status is Status.OK  # and it serves on
        result = serving.ctl.reply_to(serving.ctl.exec_async(0, "m", x_batch(8))).body
        assert result.status is Status.OK and result.disturbed is False  # no build runs now
        np.testing.assert_allclose(result.tensors[0].array(), reference(mlp(), x_batch(8))["y"], rtol=1e-6)
    finally:
        assert serving.close() == 0, serving.log()

    cache = f'engine_cache_dir="{tmp_path / "ahead"}"'
    ahead = WorkerProcess(tmp_path, "--runtime", "tensorrt", "--set", FAKE, "--set", cache,
                          "--set", 'tensorrt.build_on="ahead"').start()
    try:
        missing = ahead.ctl.prepare("m", mlp(), max_batch=8).body
        assert missing.status is Status.NOT_PREPARED and "clockwork build-engine" in missing.detail
        built = subprocess.run([sys.executable, "-m", "clockwork.client.cli", "build-engine", str(path), "--max-batch",
                                "8", "--set", FAKE, "--set", cache], capture_output=True, text=True, timeout=120)
        assert built.returncode == 0, built.stderr
        assert ahead.ctl.prepare("m", mlp(), max_batch=8).body.status is Status.OK  # from the cache
    finally:
        assert ahead.close() == 0, ahead.log()
