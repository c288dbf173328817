"""clockwork-bench gpu-check: the prepared script for a lent GPU, and its measurements on CPU torch.

What can be checked without a GPU is checked here: the carried folder's completeness, where
PyCUDA's build looks for CUDA, the dry run, a run on a machine without the carried folder, and
bench/gpu_measure.py's steps on CPU torch (the same code that runs on the GPU there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from clockwork.bench import gpu_check
from clockwork.bench.gpu_check import PYCUDA, WHEELS, Plan, find_cuda_root, missing_from, siteconf, unpack_pycuda


def carried(tmp_path, pins=(*WHEELS, PYCUDA)):
    folder = tmp_path / "carry"
    folder.mkdir(parents=True)
    for pin in pins:
        name, version = pin.split("==")
        suffix = ".tar.gz" if pin == PYCUDA else "-py3-none-any.whl"
        (folder / f"{name.replace('-', '_')}-{version}{suffix}").write_bytes(b"")
    return folder


def fake_toolkit(root, header=True, stub=True, curand=False):
    (root / "include").mkdir(parents=True)
    (root / "lib64" / "stubs").mkdir(parents=True)
    if header:
        (root / "include" / "cuda.h").write_text("")
    if stub:
        (root / "lib64" / "stubs" / "libcuda.so").write_text("")
    if curand:
        (root / "include" / "curand.h").write_text("")
        (root / "lib64" / "libcurand.so").write_text("")
    return root


def test_the_carried_folder_is_complete_only_with_every_pinned_version(tmp_path):
    assert missing_from(carried(tmp_path)) == []
    folder = carried(tmp_path / "partial", pins=WHEELS[1:])
    assert missing_from(folder) == [WHEELS[0], PYCUDA]
    assert missing_from(tmp_path / "nowhere") == [*WHEELS, PYCUDA]


def test_prepare_downloads_cpython_3_12_manylinux_wheels_and_the_pycuda_sdist(tmp_path):
    wheels, sdist = gpu_check.prepare_commands(tmp_path, "python")
    assert wheels[wheels.index("--python-version") + 1] == "3.12" and "--only-binary=:all:" in wheels
    assert "manylinux_2_28_x86_64" in wheels and set(WHEELS) <= set(wheels)
    assert sdist[-1] == PYCUDA and sdist[sdist.index("--no-binary") + 1] == "pycuda"


def test_the_cuda_root_is_one_with_a_header(tmp_path):
    good = fake_toolkit(tmp_path / "good")
    fake_toolkit(tmp_path / "headerless", header=False)
    env = {"CUDA_HOME": str(tmp_path / "headerless"), "CUDA_PATH": str(good)}
    assert find_cuda_root(env, which=lambda _: None) in (good, *map(type(good), gpu_check.CUDA_ROOTS))
    assert find_cuda_root({"CUDA_HOME": str(good)}, which=lambda _: None) == good


def test_siteconf_links_the_driver_stub_and_enables_curand_only_where_it_exists(tmp_path):
    bare = siteconf(fake_toolkit(tmp_path / "bare"), driver_dirs=())
    assert bare["CUDADRV_LIB_DIR"][0].endswith("lib64/stubs") and bare["CUDA_ENABLE_CURAND"] is False
    full = siteconf(fake_toolkit(tmp_path / "full", curand=True), driver_dirs=())
    assert full["CUDA_ENABLE_CURAND"] is True
    driver = tmp_path / "driver"
    driver.mkdir()
    (driver / "libcuda.so.1").write_text("")
    no_stub = siteconf(fake_toolkit(tmp_path / "nostub", stub=False), driver_dirs=(str(driver),),
                       scratch=tmp_path / "link")
    assert no_stub["CUDADRV_LIB_DIR"][0] == str(tmp_path / "link")  # -lcuda needs a libcuda.so
    assert (tmp_path / "link" / "libcuda.so").resolve() == (driver / "libcuda.so.1").resolve()


def test_the_pycuda_sdist_is_unpacked_with_its_siteconf_and_a_parallel_build(tmp_path):
    src = tmp_path / "pycuda-2026.1"
    src.mkdir()
    (src / "setup.cfg").write_text("[egg_info]\ntag_build =\n")
    sdist = tmp_path / "pycuda-2026.1.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(src, arcname="pycuda-2026.1")
    out = unpack_pycuda(sdist, tmp_path / "build", {"CUDA_ROOT": "/cuda", "CUDA_ENABLE_CURAND": False}, jobs=16)
    namespace: dict = {}
    exec((out / "siteconf.py").read_text(), namespace)
    assert namespace["CUDA_ROOT"] == "/cuda" and namespace["CUDA_ENABLE_CURAND"] is False
    assert "[build_ext]\nparallel = 16" in (out / "setup.cfg").read_text()


def test_the_dry_run_shows_every_step_and_what_is_missing(tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--carry-dir", str(tmp_path / "empty"), "--out", str(tmp_path)]) == 1
    shown = capsys.readouterr().out
    for what in ("1. look", "2. install", "3. build pycuda", "4. tests", "5. measure", "6. TensorRT", PYCUDA):
        assert what in shown
    assert gpu_check.main(["--dry-run", "--carry-dir", str(carried(tmp_path)), "--out", str(tmp_path)]) == 0
    assert "is complete" in capsys.readouterr().out


def test_without_the_carried_folder_the_run_fails_says_why_and_skips_what_needs_it(tmp_path):
    plan = Plan(gpu_check.sys.executable, tmp_path / "empty", tmp_path / "out", tmp_path / "site", quick=True)
    summary = gpu_check.run_all(plan)
    steps = {s.name: s for s in summary.steps}
    assert summary.failed and "make gpu-carry" in steps["install the carried wheels"].detail
    assert "measure" not in steps and steps["TensorRT engine check"].status == "skipped"
    assert json.loads((tmp_path / "out" / "gpu-check.json").read_text())["steps"][1]["status"] == "failed"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision's export: the TorchScript exporter
def test_the_measurements_run_on_cpu_torch_and_the_lane_gives_the_direct_outputs(tmp_path):
    pytest.importorskip("torch", reason="the torch extra is not installed")
    from clockwork.bench import gpu_measure

    gpu_measure.main(["--out", str(tmp_path), "--device", "cpu", "--image", "32", "--runs", "5",
                      "--load-runs", "1", "--load-mib", "1,2", "--skip", "slo"])
    report = json.loads((tmp_path / "gpu-measure.json").read_text())
    assert [r["batch"] for r in report["execs"]] == [1, 16]
    assert all(r["max_abs_err"] < 1e-3 for r in report["execs"])  # the lane serves what PyTorch computes
    assert [r["model"] for r in report["loads"]] == ["mlp-1MiB", "mlp-2MiB", "resnet50"]
    assert len(report["verdicts"]) == 4 and (tmp_path / "gpu-measure.png").stat().st_size > 10_000


def test_an_uninstalled_checkout_imports_as_clockwork_through_the_namespace_links(tmp_path):
    """The lent machine runs the checkout without installing it: Plan.env's first path gives the
    same clockwork.* names (checked without site-packages, so the venv's install cannot help)."""
    plan = Plan("python3", tmp_path / "carry", tmp_path / "out", tmp_path / "site", quick=True)
    env = {**plan.env(), "PYTHONPATH": plan.env()["PYTHONPATH"].split(os.pathsep)[0]}
    proc = subprocess.run([sys.executable, "-S", "-c", "import clockwork.common.status as s; print(s.__file__)"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "site/namespace/clockwork/common/status.py")
