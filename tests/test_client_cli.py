"""`clockwork` CLI, in-process, against the scripted controller."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clockwork.client import cli
from clockwork.common import schema, version
from clockwork.common.status import Status
from tests.client_peer import ScriptedPeer
from tests.test_client_sync import free_endpoint

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def peer():
    with ScriptedPeer() as p:
        yield p


@pytest.fixture
def clockwork(peer, capsys):
    """Run the CLI; returns (exit code, stdout, stderr)."""
    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(["--endpoint", peer.endpoint, "--timeout", "5", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def onnx_file(path, name: str, dims: tuple) -> str:
    """A one-node ONNX model (Relu) whose input `name` has `dims`, written to `path`."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", [name], ["y"])], "g",
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(dims))])
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
                     .SerializeToString())
    return str(path)


def test_upload_with_input_shapes(clockwork, peer, tmp_path):
    path = onnx_file(tmp_path / "net.onnx", "image", ("N", 3, "H", "W"))
    code, out, err = clockwork("upload", str(path), "--name", "net", "--input-shape", "image=3,32,32",
                               "--max-batch", "8", "--replace")
    assert (code, err) == (0, "")
    assert "net" in out and "image:float32[3,32,32]" in out and "b16:20.00" in out
    sent = peer.requests(schema.Upload)[0].body
    assert (sent.input_shapes, sent.max_batch, sent.replace, sent.format) == ({"image": (3, 32, 32)}, 8, True, "onnx")


def test_upload_names_a_model_after_its_file_and_detects_profiles(clockwork, peer, tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text('{"weights_bytes": 1, "load_ms": 1, "exec_ms": {"1": 1}}')
    assert clockwork("upload", str(path))[0] == 0
    assert (peer.requests(schema.Upload)[0].body.name, peer.requests(schema.Upload)[0].body.format) == \
        ("tiny", "profile")


def test_a_file_that_is_no_model_fails_at_once_with_the_reason(clockwork, peer, tmp_path):
    path = onnx_file(tmp_path / "broken.onnx", "x", ("N", "C"))
    code, out, err = clockwork("upload", str(path), "--name", "broken")
    assert code == 4 and out == "" and not peer.requests(schema.Upload)  # checked here, nothing sent
    assert err.startswith(f"error: BAD_MODEL (code {int(Status.BAD_MODEL)}): input 'x' has dynamic dimensions")
    assert "--input-shape x=3,224,224" in err and "Traceback" not in err


def test_ls(clockwork):
    code, out, _ = clockwork("ls")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["NAME", "FORMAT", "MAX_BATCH"]
    assert any(line.startswith("pair ") and "a:float32[2] b:int64[2]" in line for line in lines)
    code, out, _ = clockwork("ls", "--json")
    assert code == 0 and [m["name"] for m in json.loads(out)] == ["echo", "pair"]
    code, out, _ = clockwork("ls", "--prefix", "pa", "--json")
    assert code == 0 and [m["name"] for m in json.loads(out)] == ["pair"]
    code, out, _ = clockwork("ls", "--limit", "1")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == ["NAME", "echo"]
    assert clockwork("ls", "--limit", "-1")[0] == 2


def test_show(clockwork, peer):
    code, out, _ = clockwork("show", "pair")
    assert code == 0 and "inputs:      a:float32[2] b:int64[2]" in out
    assert json.loads(clockwork("show", "pair", "--json")[1])["name"] == "pair"
    assert [e.body.name for e in peer.requests(schema.GetModel)] == ["pair", "pair"]
    code, out, err = clockwork("show", "ghost")
    assert code == 3 and err.startswith("error: MODEL_NOT_FOUND (code 11): no model named 'ghost'")


def test_status(clockwork, peer):
    code, out, _ = clockwork("status")
    assert code == 0
    assert "WORKER" in out and "emulated-v100" in out and "32.0 GiB" in out
    assert "w0:0" in out and "goodput_per_s" in out and "12.50" in out
    assert any(line.split() == ["admission_headroom", "0.07"] for line in out.splitlines())
    worker_rows = [line for line in out.splitlines() if line.startswith("w0 ")]
    assert len(worker_rows) == 2 and worker_rows[1].split()[-1] == "-"  # a device with nothing loaded
    code, out, _ = clockwork("status", "--json", "--models", "7")
    assert json.loads(out)["counters"]["requests"] == 42 and peer.requests(schema.GetStatus)[-1].body.models_limit == 7


def test_infer_with_a_bare_array_and_output_file(clockwork, tmp_path):
    np.save(tmp_path / "x.npy", np.arange(8, dtype=np.float32).reshape(2, 4))
    code, out, err = clockwork("infer", "echo", "--input", str(tmp_path / "x.npy"), "--slo-ms", "500",
                               "--output", str(tmp_path / "out.npz"))
    assert (code, err) == (0, "")
    assert "data_out: float32 [2, 4]  [ 0.,  2.,  4.,  6.,  8., 10., ...]" in out
    assert "timing: queue 0.400 ms, exec 2.500 ms, total 3.250 ms (batch 2 on w0, cold start)" in out
    with np.load(tmp_path / "out.npz") as saved:
        np.testing.assert_array_equal(saved["data_out"], np.arange(8).reshape(2, 4) * 2)


def test_infer_with_named_inputs_and_npz(clockwork, peer, tmp_path):
    np.save(tmp_path / "a.npy", np.ones((1, 2), np.float32))
    np.save(tmp_path / "b.npy", np.ones((1, 2), np.int64))
    code, out, _ = clockwork("infer", "pair", "--input", f"a={tmp_path / 'a.npy'}", "--input",
                             f"b={tmp_path / 'b.npy'}", "--slo-ms", "500", "--priority", "4")
    assert code == 0 and "a_out" in out and "b_out: int64 [1, 2]" in out
    assert peer.requests(schema.Infer)[-1].body.priority == 4
    np.savez(tmp_path / "in.npz", a=np.ones((1, 2), np.float32), b=np.ones((1, 2), np.int64))
    assert clockwork("infer", "pair", "--input", str(tmp_path / "in.npz"), "--slo-ms", "500")[0] == 0


def test_a_refusal_for_capacity_exits_5(clockwork, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    code, out, err = clockwork("infer", "overload", "--input", f"data={tmp_path / 'x.npy'}", "--slo-ms", "5")
    assert code == 5 and out == ""
    assert err == "error: WOULD_MISS_DEADLINE (code 20): needs 12 ms, 5 ms left\n"


def test_rm(clockwork):
    assert clockwork("rm", "echo")[:2] == (0, "removed echo\n")
    code, _, err = clockwork("rm", "echo")
    assert code == 3 and err.startswith("error: MODEL_NOT_FOUND (code 11):")


@pytest.mark.parametrize("argv", [[], ["upload", "m.onnx", "--input-shape", "data"], ["infer", "echo", "--slo-ms", "5"],
                                  ["bogus"]])
def test_usage_errors_exit_2(clockwork, argv, tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    code, out, err = clockwork(*[str(tmp_path / a) if a == "m.onnx" else a for a in argv])
    assert code == 2 and "Traceback" not in err and err


def test_two_bare_inputs_are_a_usage_error(clockwork, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    code, _, err = clockwork("infer", "echo", "--input", str(tmp_path / "x.npy"), "--input",
                             str(tmp_path / "x.npy"), "--slo-ms", "5")
    assert code == 2 and "NAME=FILE" in err


def test_missing_files_exit_4(clockwork, tmp_path):
    code, _, err = clockwork("infer", "echo", "--input", str(tmp_path / "nope.npy"), "--slo-ms", "5")
    assert code == 4 and err.startswith("error: cannot read")
    code, _, err = clockwork("upload", str(tmp_path / "nope.onnx"))
    assert code == 4 and err.startswith("error:") and "Traceback" not in err


@pytest.mark.parametrize("argv", [["ls"], ["status"], ["upload", "MODEL"]])
def test_an_unreachable_controller_fails_within_seconds_saying_where(capsys, tmp_path, argv):
    endpoint = free_endpoint()
    model = onnx_file(tmp_path / "m.onnx", "x", ("N", 4))
    start = time.monotonic()
    code = cli.main(["--endpoint", endpoint, *[model if a == "MODEL" else a for a in argv]])  # default timeouts
    err = capsys.readouterr().err
    assert code == 6 and time.monotonic() - start < 5  # not the 30 s (300 s for an upload) of the command
    assert err.startswith(f"error: UNAVAILABLE (code {int(Status.UNAVAILABLE)}): no controller answered at {endpoint}")


@pytest.mark.parametrize("argv", [["ls"], ["status", "--watch", "--iterations", "1"]])
def test_a_malformed_list_of_pools_is_a_usage_error(capsys, argv):
    assert cli.main(["--endpoint", f"{free_endpoint()},,{free_endpoint()}", *argv]) == 2
    assert "--endpoint: expected controller endpoints separated by commas" in capsys.readouterr().err


def test_a_file_that_is_no_model_fails_at_once_even_with_no_controller(capsys, tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("shopping list")
    start = time.monotonic()
    assert cli.main(["--endpoint", free_endpoint(), "upload", str(path)]) == 4
    assert "not a valid ONNX model" in capsys.readouterr().err and time.monotonic() - start < 5


def test_the_help_documents_the_exit_codes(capsys):
    assert cli.main(["--help"]) == 0
    assert "exit codes:" in capsys.readouterr().out


def test_endpoint_from_the_environment(peer, capsys, monkeypatch):
    monkeypatch.setenv("CLOCKWORK_ENDPOINT", peer.endpoint)
    assert cli.main(["rm", "pair"]) == 0 and capsys.readouterr().out == "removed pair\n"


@pytest.mark.parametrize("command", ["clockwork", "clockwork-controller", "clockwork-worker", "clockwork-gateway",
                                     "clockwork-bench"])
def test_every_command_says_its_version(command):
    proc = subprocess.run([str(Path(sys.executable).parent / command), "--version"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"{command} {version()}"


def test_a_bad_log_level_is_a_clean_configuration_error():
    proc = subprocess.run([sys.executable, "-m", "clockwork.controller.main", "--set", 'log_level="loud"'],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown log level 'loud'" in proc.stderr and "Traceback" not in proc.stderr


def test_the_infer_usage_line_keeps_its_options_whole(capsys):
    assert cli.main(["infer", "--help"]) == 0
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert "--input INPUT" in " ".join(usage.split())  # not split across lines around brackets
