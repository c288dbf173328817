"""NNEF uploads: a model converted to NNEF with Khronos's nnef-tools, uploaded as a folder and as
a .tgz, serves the outputs of its ONNX twin; a graph that cannot be converted is refused with
BAD_MODEL naming the operation, and nothing is registered. Real processes on loopback."""

from __future__ import annotations

import subprocess
import sys
import tarfile

import numpy as np
import pytest

pytest.importorskip("nnef_tools", reason="the nnef extra is not installed (pip install '.[nnef]')")

from clockwork.bench.models import cnn_onnx, sample_inputs  # noqa: E402
from clockwork.bench.procs import WorkerSpec, cluster  # noqa: E402
from clockwork.client import RequestError  # noqa: E402
from clockwork.client.cli import main as cli  # noqa: E402
from clockwork.common.status import Status  # noqa: E402

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    with cluster(tmp_path_factory.mktemp("nnef"), [WorkerSpec("cpu", "onnxruntime")]) as c:
        with c.client() as admin:
            admin.upload(cnn_onnx(), "cnn-onnx")
        yield c


@pytest.fixture(scope="module")
def cnn_nnef(tmp_path_factory):
    """The bench CNN as NNEF (folder and .tgz), converted the way a user would: onnx_to_nnef."""
    folder = tmp_path_factory.mktemp("export")
    (folder / "cnn.onnx").write_bytes(cnn_onnx())
    subprocess.run([sys.executable, "-m", "nnef_tools.convert", "--input-format", "onnx", "--output-format", "nnef",
                    "--input-model", str(folder / "cnn.onnx"), "--output-model", str(folder / "cnn.nnef"),
                    "--input-shapes", "{'input': (1, 3, 64, 64)}", "--keep-io-names"], check=True,
                   capture_output=True, timeout=120)
    with tarfile.open(folder / "cnn.nnef.tgz", "w:gz") as tgz:
        for part in sorted((folder / "cnn.nnef").iterdir()):
            tgz.add(part, arcname=part.name)
    return folder / "cnn.nnef", folder / "cnn.nnef.tgz"


@pytest.mark.parametrize("form", ["folder", "tgz"])
def test_an_nnef_upload_serves_its_onnx_twins_outputs(system, cnn_nnef, form):
    path = cnn_nnef[0] if form == "folder" else cnn_nnef[1]
    with system.client() as client:
        info = client.upload(path, f"cnn-nnef-{form}")  # detected by its folder or suffix
        assert info["format"] == "onnx" and info["max_batch"] == 1  # NNEF shapes are static
        x = sample_inputs("onnx", cnn_onnx(), batch=1, seed=7)
        twin = client.infer("cnn-onnx", x, slo_ms=2000).outputs["logits"]
        served = client.infer(f"cnn-nnef-{form}", x, slo_ms=2000).outputs["logits"]
    np.testing.assert_allclose(served, twin, rtol=1e-4, atol=1e-5)


def test_a_graph_that_cannot_be_converted_is_bad_model_naming_the_operation(system, tmp_path):
    folder = tmp_path / "bad.nnef"
    folder.mkdir()
    (folder / "graph.nnef").write_text("version 1.0;\n\ngraph G( input ) -> ( output )\n{\n"
                                       "    input = external<scalar>(shape = [1, 4]);\n"
                                       "    output = frobnicate(input);\n}\n")
    with system.client() as client:
        with pytest.raises(RequestError) as info:
            client.upload(folder, "bad")
        assert info.value.status is Status.BAD_MODEL and "frobnicate" in info.value.detail
        assert "bad" not in [m["name"] for m in client.list()]


def test_the_cli_uploads_an_nnef_folder(system, cnn_nnef, capsys):
    code = cli(["--endpoint", system.client_endpoint, "upload", str(cnn_nnef[0]), "--name", "cnn-nnef-cli"])
    assert code == 0 and "cnn-nnef-cli" in capsys.readouterr().out
