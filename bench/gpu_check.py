"""`clockwork-bench gpu-check`: one prepared script for a GPU host that was lent bare.

A lent GPU machine has CUDA (nvcc), Python, PyTorch, numpy and onnx, and no network. What this
project needs beside them travels in one folder, prepared here beforehand:

    make gpu-carry                              # here, with network: fill .gpu-carry/
    clockwork-bench gpu-check --dry-run         # here: every step it would take, and what is missing
    python3 bench/gpu_check.py --out "$OUT"      # there (carry .gpu-carry): everything, in one call

The steps, each logged to --out and timed:
1. look: the GPU (nvidia-smi), Python, and whether torch sees CUDA;
2. install the carried wheels (pyzmq, structlog, onnx2torch, pytools, ...) into a private folder;
3. build PyCUDA from its sdist against the machine's CUDA (siteconf written from what is found);
4. run the GPU-facing tests there: tests/test_cuda_devices.py with the real PyCUDA as well as the
   fake, and tests/test_torch_runtime.py with its CUDA parts;
5. measure (bench/gpu_measure.py): the torch runtime's exec percentiles beside PyTorch called
   directly, LOAD time against bytes, SLO attainment at 50/80/100% of capacity; a JSON and a plot;
6. the TensorRT engine check (bench/trt_check.py) where TensorRT is installed; skipped otherwise.

A failed step is reported and the later steps still run where they can. The exit status is 1
if any step failed. Only the standard library is imported here: the rest is not installed yet.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
CARRY_DIR = REPO / ".gpu-carry"
SITE = Path(tempfile.gettempdir()) / "clockwork-gpu-site"
# What the lent machine's image lacks, pinned to versions tested together. Pure-Python wheels
# and manylinux wheels for CPython 3.12 (the image's Python).
WHEELS = ("pyzmq==27.3.0", "structlog==26.1.0", "onnx2torch==1.5.15", "orjson==3.13.0", "hdrhistogram==0.10.8",
          "pbr==7.1.3", "pytools==2026.1.1", "platformdirs==4.14.9", "mako==1.4.3", "siphash24==1.9")
PYCUDA = "pycuda==2026.1"
TARGET_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_26_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64")
GPU_TESTS = ("tests/test_cuda_devices.py", "tests/test_torch_runtime.py")
CUDA_ROOTS = ("/usr/local/cuda", "/usr/cuda", "/opt/cuda")
DRIVER_DIRS = ("/usr/local/nvidia/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/nvidia/lib")


@dataclass
class StepResult:
    name: str
    status: str  # ok | failed | skipped
    seconds: float
    detail: str = ""


@dataclass
class Summary:
    steps: list[StepResult] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(s.status == "failed" for s in self.steps)


# ------------------------------------------------------------------------------ here: the carried folder


def prepare_commands(carry_dir: Path, python: str = sys.executable) -> list[list[str]]:
    """The pip downloads that fill the carried folder (wheels for the target, PyCUDA's sdist)."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    wheels = [python, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version",
              TARGET_PYTHON, "--implementation", "cp", *platforms, "-d", str(carry_dir), *WHEELS]
    sdist = [python, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", "pycuda", "-d", str(carry_dir),
             PYCUDA]
    return [wheels, sdist]


def missing_from(carry_dir: Path) -> list[str]:
    """The pinned distributions that the carried folder lacks."""
    present = {p.name.lower().replace("_", "-") for p in carry_dir.glob("*")} if carry_dir.is_dir() else set()
    missing = []
    for pin in (*WHEELS, PYCUDA):
        name, version = pin.split("==")
        prefix = f"{name.lower().replace('_', '-')}-{version}"
        if not any(p.startswith(prefix) for p in present):
            missing.append(pin)
    return missing


# ------------------------------------------------------------------------------ there: finding CUDA


def find_cuda_root(env: dict | None = None, which=shutil.which) -> Path | None:
    """The CUDA toolkit whose include/cuda.h PyCUDA compiles against."""
    env = os.environ if env is None else env
    candidates = [env.get("CUDA_HOME"), env.get("CUDA_PATH"), *CUDA_ROOTS]
    nvcc = which("nvcc")
    if nvcc:
        candidates.append(str(Path(os.path.realpath(nvcc)).parent.parent))
    for root in filter(None, candidates):
        if (Path(root) / "include" / "cuda.h").is_file():
            return Path(root)
    return None


def siteconf(root: Path, driver_dirs: Sequence[str] = DRIVER_DIRS, scratch: Path | None = None) -> dict:
    """PyCUDA's build settings for the toolkit at `root`: where libcuda.so is to link against
    (the toolkit's stub, else the driver's own; where the driver has only libcuda.so.1, a link
    to it in `scratch`), and cuRAND only where its header exists."""
    lib_dirs = [root / "lib64", root / "lib", root / "targets" / "x86_64-linux" / "lib"]
    stubs = [d / "stubs" for d in lib_dirs]
    candidates = (*stubs, *map(Path, driver_dirs), *lib_dirs)
    driver = [d for d in candidates if (d / "libcuda.so").exists()]
    versioned = [d for d in candidates if (d / "libcuda.so.1").exists()]
    if not driver and versioned and scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
        (scratch / "libcuda.so").symlink_to(versioned[0] / "libcuda.so.1")
        driver = [scratch]
    curand = (root / "include" / "curand.h").is_file() and any(
        (d / "libcurand.so").exists() for d in lib_dirs)
    existing = [str(d) for d in lib_dirs if d.is_dir()]
    return {"CUDA_ROOT": str(root), "CUDA_INC_DIR": [str(root / "include")],
            "CUDADRV_LIB_DIR": [str(d) for d in driver[:1]] + existing, "CUDART_LIB_DIR": existing,
            "CURAND_LIB_DIR": existing, "CUDA_ENABLE_CURAND": curand}


def unpack_pycuda(sdist: Path, into: Path, settings: dict, jobs: int) -> Path:
    """PyCUDA's sdist unpacked, with its siteconf.py and a parallel build_ext."""
    with tarfile.open(sdist) as tar:
        tar.extractall(into, filter="data")
    src = next(into.glob("pycuda-*"))
    (src / "siteconf.py").write_text("".join(f"{k} = {v!r}\n" for k, v in settings.items()))
    with open(src / "setup.cfg", "a") as fh:
        fh.write(f"\n[build_ext]\nparallel = {jobs}\n")
    return src


# ------------------------------------------------------------------------------ the steps


PACKAGES = ("common", "controller", "worker", "client", "bench")


def namespace_root(site: Path) -> Path:
    """A folder whose clockwork/ links to this checkout's top-level folders.

    The project imports itself as clockwork.* (setup.cfg maps the folders), and the lent machine
    has no install of it: these links give the tests and the measurement the same import names
    without running pip on the checkout."""
    root = site / "namespace"
    package = root / "clockwork"
    package.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        link = package / name
        if not link.is_symlink():
            link.symlink_to(REPO / name, target_is_directory=True)
    return root


@dataclass(frozen=True)
class Plan:
    python: str
    carry_dir: Path
    out: Path
    site: Path
    quick: bool
    steps: tuple[str, ...] = ()  # of pycuda, tests, measure, trt; empty: all
    test_args: tuple[str, ...] = ()

    def env(self) -> dict:
        paths = [str(namespace_root(self.site)), str(self.site), str(REPO), os.environ.get("PYTHONPATH", "")]
        return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "PYTHONUNBUFFERED": "1"}

    def install(self) -> list[str]:
        return [self.python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                "--upgrade", "--target", str(self.site), *map(str, sorted(self.carry_dir.glob("*.whl")))]

    def pycuda_install(self, src: Path) -> list[str]:
        return [self.python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
                "--target", str(self.site), str(src)]

    def tests(self) -> list[str]:
        return [self.python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *self.test_args, *GPU_TESTS]

    def measure(self) -> list[str]:
        return [self.python, "-m", "clockwork.bench.gpu_measure", "--out", str(self.out), *(["--quick"] if self.quick else [])]

    def trt(self) -> list[str]:
        return [self.python, "-m", "clockwork.bench.trt_check", "--quick", "--json", str(self.out / "trt-check.json")]


def run_logged(cmd: list[str], log: Path, env: dict | None = None, cwd: Path = REPO, timeout_s: float = 900) -> int:
    """Run cmd, its output both shown and kept in `log`."""
    print(f"$ {' '.join(cmd[:8])}{' ...' if len(cmd) > 8 else ''}", flush=True)
    with open(log, "a") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout_s
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            if "Warning" not in line and "warnings.warn" not in line:
                print(line, end="", flush=True)
            if time.monotonic() > deadline:
                proc.kill()
                fh.write(f"killed after {timeout_s:.0f} s\n")
                break
        return proc.wait()


def step(summary: Summary, name: str, body) -> bool:
    print(f"\n=== {name}", flush=True)
    t0 = time.monotonic()
    try:
        status, detail = body()
    except Exception as exc:  # report it, and let the later steps run
        status, detail = "failed", f"{type(exc).__name__}: {exc}"
    summary.steps.append(StepResult(name, status, round(time.monotonic() - t0, 1), detail))
    print(f"=== {name}: {status}{' - ' + detail if detail else ''} ({summary.steps[-1].seconds:.0f} s)", flush=True)
    return status == "ok"


def outcome(code: int, what: str) -> tuple[str, str]:
    return ("ok", "") if code == 0 else ("failed", f"{what} exited with status {code}")


def run_all(plan: Plan) -> Summary:
    summary = Summary()
    plan.out.mkdir(parents=True, exist_ok=True)
    log = plan.out / "gpu-check.log"

    def look() -> tuple[str, str]:
        run_logged(["nvidia-smi", "-L"], log) if shutil.which("nvidia-smi") else None
        code = run_logged([plan.python, "-c", "import sys, torch; print(sys.version.split()[0], torch.__version__, "
                           "'cuda', torch.version.cuda, torch.cuda.is_available())"], log)
        return outcome(code, "torch")

    def install() -> tuple[str, str]:
        missing = missing_from(plan.carry_dir)
        if missing:
            return "failed", f"the carried folder lacks {', '.join(missing)} (make gpu-carry)"
        return outcome(run_logged(plan.install(), log), "pip install")

    def pycuda() -> tuple[str, str]:
        root = find_cuda_root()
        if root is None:
            return "failed", "no CUDA toolkit with include/cuda.h was found"
        sdist = next(plan.carry_dir.glob("pycuda-*.tar.gz"))
        with tempfile.TemporaryDirectory(prefix="pycuda-build-") as scratch:
            settings = siteconf(root, scratch=Path(scratch) / "libcuda")
            print(f"siteconf: {settings}", flush=True)
            src = unpack_pycuda(sdist, Path(scratch), settings, os.cpu_count() or 4)
            code = run_logged(plan.pycuda_install(src), plan.out / "pycuda-build.log", plan.env())
        if code:
            return outcome(code, "the PyCUDA build (pycuda-build.log)")
        return outcome(run_logged([plan.python, "-c", "import pycuda.driver as d; d.init(); "
                                   "print('pycuda', d.get_version(), d.Device(0).name())"], log, plan.env()), "pycuda")

    def wanted(name: str) -> bool:
        return not plan.steps or name in plan.steps

    step(summary, "look at the machine", look)
    installed = step(summary, "install the carried wheels", install)
    if installed and wanted("pycuda"):
        step(summary, "build PyCUDA from its sdist", pycuda)
    if installed and wanted("tests"):
        step(summary, "GPU-facing tests", lambda: outcome(run_logged(plan.tests(), plan.out / "tests.log", plan.env()),
                                                          "pytest (tests.log)"))
    if installed and wanted("measure"):
        step(summary, "measure", lambda: outcome(run_logged(plan.measure(), plan.out / "measure.log", plan.env()),
                                                 "gpu_measure (its goals are in measure.log)"))

    def trt() -> tuple[str, str]:
        probe = subprocess.run([plan.python, "-c", "import tensorrt"], capture_output=True, env=plan.env())
        if probe.returncode:
            return "skipped", "TensorRT is not installed"
        return outcome(run_logged(plan.trt(), log, plan.env()), "trt_check")

    if wanted("trt"):
        step(summary, "TensorRT engine check", trt)
    (plan.out / "gpu-check.json").write_text(json.dumps(asdict(summary), indent=1) + "\n")
    print("\n" + "\n".join(f"{s.status:>7}  {s.seconds:6.0f} s  {s.name}{'  - ' + s.detail if s.detail else ''}"
                           for s in summary.steps))
    return summary


def dry_run(plan: Plan) -> int:
    """Each step and its command, and whether the carried folder is complete."""
    root = find_cuda_root()
    missing = missing_from(plan.carry_dir)
    lines = [
        f"1. look: nvidia-smi -L; {plan.python} -c 'import torch; ...'",
        f"2. install {len(list(plan.carry_dir.glob('*.whl')))} carried wheels: {' '.join(plan.install()[:10])} ...",
        f"3. build {PYCUDA} from {plan.carry_dir.name}/ with siteconf "
        f"{siteconf(root) if root else '(no CUDA toolkit here; found there)'}: {' '.join(plan.pycuda_install(Path('SRC')))}",
        f"4. tests: {' '.join(plan.tests())}",
        f"5. measure: {' '.join(plan.measure())}",
        f"6. TensorRT engine check, if TensorRT imports: {' '.join(plan.trt())}",
        f"PYTHONPATH there: {plan.env()['PYTHONPATH']}",
    ]
    print("\n".join(lines))
    if missing:
        print(f"the carried folder {plan.carry_dir} lacks: {', '.join(missing)}; run make gpu-carry")
        return 1
    print(f"the carried folder {plan.carry_dir} is complete")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="clockwork-bench gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/gpu-check", help="logs, gpu-check.json, gpu-measure.json and .png")
    p.add_argument("--carry-dir", default=str(CARRY_DIR))
    p.add_argument("--site", default=str(SITE), help="where the carried packages and PyCUDA are installed")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--quick", action="store_true", help="measure with fewer runs and shorter load steps")
    p.add_argument("--steps", default="", help="only these of pycuda,tests,measure,trt (comma-separated); "
                   "the machine is always looked at and the wheels installed")
    p.add_argument("--test-args", default="", help="extra pytest arguments for the tests step, e.g. '-k cuda'")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print each step and check the carried folder")
    mode.add_argument("--prepare", action="store_true", help="fill the carried folder (needs the package index)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan(args.python, Path(args.carry_dir), Path(args.out), Path(args.site), args.quick,
                tuple(s for s in args.steps.split(",") if s), tuple(args.test_args.split()))
    if args.prepare:
        plan.carry_dir.mkdir(parents=True, exist_ok=True)
        for cmd in prepare_commands(plan.carry_dir, args.python):
            subprocess.run(cmd, check=True)
        missing = missing_from(plan.carry_dir)
        print(f"{plan.carry_dir}: {len(list(plan.carry_dir.iterdir()))} files"
              + (f"; still missing {', '.join(missing)}" if missing else ", complete"))
        return 1 if missing else 0
    if args.dry_run:
        return dry_run(plan)
    return 1 if run_all(plan).failed else 0


if __name__ == "__main__":
    sys.exit(main())
