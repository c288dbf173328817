"""A spooled ONNX model's weights reach onnxruntime as external data in the spooled file itself:
same outputs, no copy of the weights written, a malformed or externally-backed model refused, and
a session built from it peaks near the model's size (not twice it)."""

import json
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest

from clockwork.bench.models import matmul_onnx
from clockwork.common.config import WorkerConfig
from clockwork.common.status import Status
from clockwork.worker.runtimes.base import RuntimeFailure
from clockwork.worker.runtimes.onnx_mapping import NotMappable, external_header
from clockwork.worker.runtimes.onnxrt import MappedOnnx, OnnxRuntime

MIB = 1 << 20


def session(model, prepack: bool = True):
    opts = onnxruntime.SessionOptions()
    if not prepack:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    return onnxruntime.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("prepack", [True, False])
def test_the_header_refers_to_the_files_own_bytes_and_gives_the_same_outputs(tmp_path, prepack):
    blob = matmul_onnx(256, layers=3)
    path = tmp_path / "model.onnx"
    path.write_bytes(blob)
    header = external_header(path)
    assert len(header) < 2048 < len(blob) and path.read_bytes() == blob  # nothing copied, nothing changed
    (tmp_path / "header.onnx").write_bytes(header)
    x = np.random.default_rng(1).random((5, 256), dtype=np.float32)
    want = session(blob, prepack).run(None, {"x": x})[0]
    assert np.array_equal(session(str(tmp_path / "header.onnx"), prepack).run(None, {"x": x})[0], want)


def test_small_initializers_stay_inline(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(matmul_onnx(64))  # 16 KiB of weights
    assert external_header(path) == path.read_bytes()


def test_any_truncation_is_either_refused_or_read_never_a_crash(tmp_path):
    blob = matmul_onnx(256, layers=2)
    path = tmp_path / "model.onnx"
    for cut in range(1, len(blob), 997):
        path.write_bytes(blob[:cut])
        try:
            external_header(path)
        except NotMappable:
            pass


def test_a_truncated_model_or_one_with_external_data_is_refused(tmp_path):
    blob = matmul_onnx(256)
    path = tmp_path / "model.onnx"
    path.write_bytes(blob[:-300])
    with pytest.raises(NotMappable):
        external_header(path)
    path.write_bytes(blob)
    (tmp_path / "mapped.onnx").write_bytes(external_header(path))
    with pytest.raises(NotMappable, match="external data"):
        external_header(tmp_path / "mapped.onnx")
    runtime = OnnxRuntime(WorkerConfig(devices=1))
    with pytest.raises(RuntimeFailure) as refused:
        runtime.prepare("m", "d", "onnx", tmp_path / "mapped.onnx", None)
    assert refused.value.status is Status.BAD_MODEL and "external data" in refused.value.detail


CHILD = """
import json, sys
from pathlib import Path
from clockwork.common.config import WorkerConfig
from clockwork.worker.runtimes.onnxrt import MappedOnnx, OnnxRuntime
from clockwork.worker.runtimes.onnx_mapping import external_header

def kib(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":"))

runtime = OnnxRuntime(WorkerConfig(devices=1))
path = Path(sys.argv[1])
model = MappedOnnx(path, external_header(path))
Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from here
before = kib("VmRSS")
session = runtime._session(model)
print(json.dumps({"peak_kib": kib("VmHWM") - before, "held_kib": kib("RssAnon")}))
"""


def test_a_session_of_a_spooled_model_peaks_near_its_size_not_twice_it(tmp_path):
    """Ten 9 MiB layers, session built in a child process with prepacking on: VmHWM above the
X
    tensor; built from the bytes it is 1.5x-2x)."""
    path = tmp_path / "model.onnx"
    path.write_bytes(matmul_onnx(1536, layers=10))
    size = path.stat().st_size
    child = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    peak = json.loads(child.stdout)["peak_kib"] * 1024
    assert 0.9 * size < peak < 1.4 * size  # the packed weights are held; the originals were not copied
