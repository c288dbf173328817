"""The daemons and the client need none of the extras: a controller host installs no plotting
stack, no HTTP server and no PyTorch. Checked by importing them with every extra's modules made
unimportable, in a child process (the way an installation without the extras sees them)."""

from __future__ import annotations

import subprocess
import sys

EXTRAS_MODULES = ("matplotlib", "hdrh", "aiohttp", "orjson", "tritonclient", "grpc", "torch", "onnx2torch",
                  "nnef_tools", "tensorrt", "pycuda")


def run_without_extras(code: str) -> subprocess.CompletedProcess:
    blocker = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in EXTRAS_MODULES)
    return subprocess.run([sys.executable, "-c", blocker + code], capture_output=True, text=True, timeout=120)


def test_the_daemons_the_client_and_the_cli_run_without_any_extra():
    proc = run_without_extras("import controller.main, worker.main, client, client.cli\n"
                              "from worker.runtimes import create\n"
                              "sys.exit(client.cli.main(['--version']))")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("clockwork ")


def test_the_gateway_without_its_extra_says_which_extra_to_install():
    proc = run_without_extras("import client.gateway")
    assert proc.returncode != 0 and "pip install 'clockwork-serving[gateway]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_benchmark_without_the_bench_extra_says_which_extra_to_install():
    proc = run_without_extras("from bench import cli\nsys.exit(cli.main(['soak', '--help']))")
    assert proc.returncode == 2 and "pip install 'clockwork-serving[bench]'" in proc.stderr
    assert "Traceback" not in proc.stderr
