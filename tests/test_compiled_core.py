"""The scheduling core compiled with mypyc (setup.py) decides exactly as its Python source does.

One seeded simulation, every request's answer and every action the controller sent, played by
the compiled core and again with CLOCKWORK_PURE_PYTHON=1 (the Python source, the reference):
the logs must be identical. The run is small but busy (cold starts, evictions, batching,
refusals, expiry) and covers both the Clockwork policy and the FIFO baseline."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import clockwork.controller.core as core_module
from clockwork.controller import admission, policy

SIM = [sys.executable, "-m", "clockwork.bench.sim", "--compare", "--gpus", "4", "--models", "300",
       "--gpu-memory-gb", "1", "--slo-ms", "50", "--workload", "azure", "--rate", "4000", "--duration-s", "2",
       "--seed", "3", "--logs", "--quiet"]


def compiled(module) -> bool:
    return not module.__file__.endswith(".py")


def test_the_core_is_compiled_where_a_c_compiler_is():
    if os.environ.get("CLOCKWORK_PURE_PYTHON"):
        pytest.skip("CLOCKWORK_PURE_PYTHON is set: the Python source is imported on purpose")
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler on this machine: the core was installed as Python source")
    assert compiled(core_module) and compiled(policy) and compiled(admission), (
        f"{core_module.__file__}: the core was not compiled; reinstall (pip install -e .) and read its build output")


@pytest.mark.skipif(not compiled(core_module), reason="the core is not compiled here: nothing to compare")
def test_compiled_and_python_cores_make_the_same_decisions(tmp_path):
    runs = {}
    for name, pure in (("compiled", ""), ("python", "1")):
        out = tmp_path / name
        env = {**os.environ, "CLOCKWORK_PURE_PYTHON": pure}
        subprocess.run([*SIM, "--out", str(out)], env=env, check=True, capture_output=True, timeout=300)
        runs[name] = out
    logs = sorted(p.relative_to(runs["python"]) for p in runs["python"].rglob("*.tsv"))
    assert {str(p) for p in logs} >= {"clockwork/requests.tsv", "clockwork/actions.tsv",
                                      "fifo/requests.tsv", "fifo/actions.tsv"}
    for rel in logs:
        python_log = (runs["python"] / rel).read_text()
        assert len(python_log.splitlines()) > 100, rel
        assert (runs["compiled"] / rel).read_text() == python_log, f"{rel} differs"


def test_the_python_source_is_imported_when_asked():
    code = "import clockwork.controller.core as c, clockwork.controller.policy as p; print(c.__file__, p.__file__)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "CLOCKWORK_PURE_PYTHON": "1"},
                         check=True, capture_output=True, text=True).stdout.split()
    assert [Path(f).suffix for f in out] == [".py", ".py"]


def test_a_module_edited_since_it_was_compiled_is_stale(tmp_path):
    """An editable install keeps the compiled modules beside the source; an edit must not be
    silently ignored (controller/__init__.py then imports the source, all of it)."""
    from clockwork.controller import MANIFEST, stale_modules

    assert stale_modules(str(tmp_path)) == []  # nothing compiled
    for name in ("core", "policy"):
        (tmp_path / f"{name}.py").write_text(f"# {name}\n")
    digests = {name: hashlib.sha256((tmp_path / f"{name}.py").read_bytes()).hexdigest() for name in ("core", "policy")}
    (tmp_path / MANIFEST).write_text(json.dumps(digests))
    assert stale_modules(str(tmp_path)) == []
    (tmp_path / "policy.py").write_text("# policy, edited\n")
    assert stale_modules(str(tmp_path)) == ["policy"]
    (tmp_path / "core.py").unlink()
    assert stale_modules(str(tmp_path)) == ["core", "policy"]
