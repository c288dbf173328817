"""`clockwork-bench big-model`: a 1 GiB ONNX model uploads and serves while other models serve.

Real processes: a controller, an onnxruntime worker that will hold the big model, and an emulated
worker serving the other models. The same seeded Poisson schedule on the other models is played
twice, without and with the upload (the real `clockwork upload`, started 2 s into the run), and
each figure is a comparison within this run:

- the other models' share of requests answered within their SLO, with and without the upload,
  and the difference in points (goal: within 0.1);
- workers declared lost during the run (goal: none);
- each process's peak RSS above its idle RSS, as a multiple of the model's size (goal: <= 1.5):
  the controller and the worker (VmHWM, reset just before the upload), and the uploading CLI
  (its peak, above that of a `clockwork ls`, which imports the same code and holds no model).
  A child process that a daemon starts to check a big model is not counted in its parent.
  VmHWM counts file-backed pages too (onnxruntime maps a spooled model's weights from its file),
  so the anonymous part is sampled beside it (RssAnon every 10 ms: a lower bound of its peak);
- the upload's wall time, and the big model's first answers after it.

The model is a chain of --layers MatMuls, n x n float32 each: by default 64 of 16 MiB, because a
real 1 GiB model is many tensors of a few MiB (BERT-large's are 4-16 MiB), and the tensors' size
decides a worker's peak (docs/benchmarks.md: with its weights parsed onto the heap, a worker
peaked at 4.9x with 64 x 16 MiB, 1.1x with 16 x 64 MiB and 2.0x with one 1 GiB tensor).
`--layers 1 --size 16384` is that last extreme.

    python -m clockwork.bench.cli big-model                          # 64 x 2048 x 2048 float32: 1 GiB
    python -m clockwork.bench.cli big-model --layers 1 --size 16384  # one 1 GiB tensor
    python -m clockwork.bench.cli big-model --layers 16 --size 1024 --duration-s 10 --out runs/big  # quick: 64 MiB

Writes big-model.json into --out (and prints the verdicts).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from clockwork.bench import workload
from clockwork.bench.loadgen import run_open_loop
from clockwork.bench.models import matmul_onnx, profile_json
from clockwork.bench.procs import WorkerSpec, cluster, run_in_temp_dir
from clockwork.bench.progress import Progress, command_main, say
from clockwork.bench.report import format_table, write_json
from clockwork.bench.run import proc_status_mib
from clockwork.client import Client

MIB = 1 << 20
OTHERS = 4  # emulated models serving traffic
OTHER_INPUT = {"data": np.zeros((1, 16), np.float32)}


@dataclass
class Result:
    model_bytes: int
    rate: float
    duration_s: float
    share_without: float = 0.0
    share_with: float = 0.0
    workers_lost: int = 0
    upload_s: float = 0.0
    big_exec_ms: list[float] = field(default_factory=list)
    idle_rss_mib: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    idle_anon_mib: dict[str, float] = field(default_factory=dict)
    peak_anon_mib: dict[str, float] = field(default_factory=dict)  # sampled, for the report only
    verdicts: list[tuple[str, str, str, bool]] = field(default_factory=list)

    def judge(self) -> None:
        drop = 100 * (self.share_without - self.share_with)
        self.verdicts.append(("other models within SLO, points lost to the upload", f"{drop:.3f}", "<= 0.1",
                              drop <= 0.1))
        self.verdicts.append(("workers declared lost", str(self.workers_lost), "0", self.workers_lost == 0))
        for name, peak in self.peak_rss_mib.items():
            ratio = (peak - self.idle_rss_mib.get(name, 0.0)) * MIB / self.model_bytes
            self.verdicts.append((f"{name}: peak RSS above idle / model size", f"{ratio:.2f}", "<= 1.5", ratio <= 1.5))


def status_mib(pid: int, key: str) -> float:
    """proc_status_mib, 0 once the process is gone."""
    return proc_status_mib(pid, key) or 0.0


def reset_peak(pid: int) -> None:
    """Make VmHWM start again from the current RSS (Linux: write 5 to clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


class AnonSampler(threading.Thread):
    """The highest RssAnon seen of each process, sampled until stop()."""

    def __init__(self, pids: dict[str, int]):
        super().__init__(daemon=True)
        self.pids = pids
        self.peak_mib = {name: 0.0 for name in pids}
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.01):
            for name, pid in self.pids.items():
                self.peak_mib[name] = max(self.peak_mib[name], status_mib(pid, "RssAnon"))

    def stop(self) -> dict[str, float]:
        self._done.set()
        self.join()
        return self.peak_mib


def cli_peak_mib(argv: list[str]) -> tuple[float, float, int]:
    """Run a `clockwork` command; (its peak RSS in MiB, wall seconds, exit status)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, status_mib(proc.pid, "VmHWM"))
        time.sleep(0.02)
    return peak, time.monotonic() - start, proc.returncode


def play(endpoint: str, args: argparse.Namespace, label: str) -> float:
    schedule = workload.poisson_schedule([args.rate / OTHERS] * OTHERS, args.duration_s, args.seed)
    names = [f"other{i}" for i in range(OTHERS)]
    with Progress(total_s=args.duration_s, label=label) as bar:
        results = run_open_loop(endpoint, schedule, names, args.slo_ms, {n: OTHER_INPUT for n in names}, bar)
    return results.met_slo / results.scheduled if results.scheduled else 0.0


def measure(args: argparse.Namespace, run_dir: Path) -> Result:
    model_path = run_dir / "big.onnx"
    say(f"writing a model of {args.layers} MatMuls of {4 * args.size ** 2 / MIB:.0f} MiB")
    model_path.write_bytes(matmul_onnx(args.size, layers=args.layers))
    size = model_path.stat().st_size
    result = Result(size, args.rate, args.duration_s)
    workers = [WorkerSpec("cpu", "onnxruntime"), WorkerSpec("emu", "emulated", devices=2, device_memory_mb=4096)]
    with cluster(run_dir, workers, controller_settings=[f"max_model_bytes={2 * size + MIB}"]) as c:
        with Client(c.client_endpoint, timeout_s=60) as admin:
            for i in range(OTHERS):
                admin.upload(profile_json(), f"other{i}", format="profile")
        cli = [sys.executable, "-m", "clockwork.client.cli", "--endpoint", c.client_endpoint]
        cli_idle, _, _ = cli_peak_mib([*cli, "ls"])
        result.share_without = play(c.client_endpoint, args, "without the upload")
        pids = {"controller": c.group.get("controller").pid, "worker": c.group.get("worker-cpu").pid}
        lost_before = c.status()["counters"].get("workers_lost", 0)
        result.idle_rss_mib = {name: status_mib(pid, "VmRSS") for name, pid in pids.items()}
        result.idle_rss_mib["cli"] = cli_idle
        result.idle_anon_mib = {name: status_mib(pid, "RssAnon") for name, pid in pids.items()}
        for pid in pids.values():
            reset_peak(pid)
        sampler = AnonSampler(pids)
        sampler.start()
        upload: dict = {}

        def upload_big() -> None:
            time.sleep(2.0)
            upload["peak"], upload["s"], upload["code"] = cli_peak_mib(
                [*cli, "--timeout", "600", "upload", str(model_path), "--name", "big", "--max-batch", "1"])

        uploader = threading.Thread(target=upload_big)
        uploader.start()
        result.share_with = play(c.client_endpoint, args, "with the upload")
        uploader.join()
        if upload.get("code"):
            raise RuntimeError(f"clockwork upload of the big model exited {upload['code']}")
        result.upload_s = round(upload["s"], 2)
        with Client(c.client_endpoint, timeout_s=120) as client:
            x = {"x": np.ones((1, args.size), np.float32)}
            result.big_exec_ms = [round(client.infer("big", x, slo_ms=60_000).exec_ms, 2) for _ in range(3)]
        result.peak_rss_mib = {name: status_mib(pid, "VmHWM") for name, pid in pids.items()}
        result.peak_anon_mib = sampler.stop()
        result.peak_rss_mib["cli"] = upload["peak"]
        result.workers_lost = c.status()["counters"].get("workers_lost", 0) - lost_before
    result.judge()
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="clockwork-bench big-model", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=2048, help="each MatMul's n: 4 n^2 bytes of weights")
    p.add_argument("--layers", type=int, default=64, help="MatMuls in a chain (64 x 4 x 2048^2 bytes: 1 GiB)")
    p.add_argument("--rate", type=float, default=200.0, help="requests/s to the other models, together")
    p.add_argument("--duration-s", type=float, default=30.0, help="each run's length")
    p.add_argument("--slo-ms", type=float, default=100.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="", help="folder for big-model.json")
    p.add_argument("--keep", action="store_true", help="keep the run's state and logs")
    return p.parse_args(argv)


def report(result: Result, out: str) -> int:
    say(f"model {result.model_bytes / MIB:.0f} MiB: upload {result.upload_s} s; big model exec "
        f"{result.big_exec_ms} ms; within SLO without/with the upload {100 * result.share_without:.3f}% / "
        f"{100 * result.share_with:.3f}%; idle RSS {result.idle_rss_mib}; peak RSS {result.peak_rss_mib} (MiB)")
    for name, peak in result.peak_anon_mib.items():
        ratio = (peak - result.idle_anon_mib.get(name, 0.0)) * MIB / result.model_bytes
        say(f"{name}: anonymous RSS (sampled) peaked at {ratio:.2f}x the model's size above idle")
    print(format_table([[w, m, g, "met" if ok else "NOT MET"] for w, m, g, ok in result.verdicts],
                       ["what", "measured", "goal", ""]))
    if out:
        write_json(Path(out) / "big-model.json", asdict(result))
    return 0 if all(v[3] for v in result.verdicts) else 1


def run(args: argparse.Namespace) -> int:
    return run_in_temp_dir("clockwork-big-model-", args.keep, "big model",
                           lambda run_dir: report(measure(args, run_dir), args.out))


def main(argv: Sequence[str] | None = None) -> int:
    return command_main(parse_args, run, "big model")(argv)


if __name__ == "__main__":
    sys.exit(main())
