"""`clockwork-worker`: run a worker process.

    clockwork-worker --controller tcp://10.0.0.1:5556 --runtime onnxruntime
    clockwork-worker --runtime emulated --devices 8 --device-memory-mb 16384
    clockwork-worker --config worker.toml --set threads_per_lane=1

Settings come from the `[worker]` table of --config, then each --set key=value, then the
convenience flags. SIGTERM or SIGINT stops it cleanly (exit 0); a runtime that cannot run on
this host (e.g. TensorRT missing), unusable keys, or a non-loopback controller without keys exit 2
with a one-line reason. Under systemd (Type=notify) it reports READY=1 once the controller has
welcomed it and its models are prepared, and feeds the watchdog while its lanes are healthy.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

import zmq

from clockwork.common import config as cfg
from clockwork.common import cpu_latency, logsetup, version
from clockwork.common.config import MIB, WorkerConfig
from clockwork.common.security import SecurityError

# Lanes spin the last stretch before a start time while holding the GIL; a short switch interval
# lets the other lanes and the socket loop in within ~0.1 ms instead of CPython's default 5 ms.
SWITCH_INTERVAL_S = 0.0001


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="clockwork-worker", description="Clockwork worker: runs timed actions on devices.")
    p.add_argument("--config", metavar="FILE", help="TOML file with a [worker] table")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override one setting (repeatable), e.g. --set page_bytes=8388608")
    p.add_argument("--controller", help="controller endpoint for workers, e.g. tcp://127.0.0.1:5556")
    p.add_argument("--runtime", choices=("onnxruntime", "emulated", "tensorrt", "torch"))
    p.add_argument("--devices", type=int, help="devices this process exposes")
    p.add_argument("--name", help="worker name (default: hostname-pid)")
    p.add_argument("--device-memory-mb", type=int, help="model memory per device, in MiB")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    return p.parse_args(argv)


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The convenience flags as key=value overrides (TOML values), applied after --set."""
    values = {
        "controller": args.controller,
        "runtime": args.runtime,
        "devices": args.devices,
        "name": args.name,
        "device_memory_bytes": None if args.device_memory_mb is None else args.device_memory_mb * MIB,
        "log_level": args.log_level,
    }
    return [f"{key}={json.dumps(value)}" for key, value in values.items() if value is not None]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = cfg.load(WorkerConfig, "worker", args.config, [*args.overrides, *flag_overrides(args)])
        if config.devices < 1:
            raise ValueError(f"[worker].devices must be at least 1, got {config.devices}")
        log = logsetup.configure(config.log_level, process="worker")
    except (OSError, ValueError) as exc:
        print(f"clockwork-worker: {exc}", file=sys.stderr)
        return 2

    from clockwork.common.gc_tuning import tune_for_serving
    from clockwork.worker.daemon import Daemon
    from clockwork.worker.runtimes import RuntimeUnavailable, create

    try:
        runtime = create(config.runtime, config)
    except (RuntimeUnavailable, ImportError) as exc:
        print(f"clockwork-worker: runtime {config.runtime!r} is unavailable: {exc}", file=sys.stderr)
        return 2
    if not runtime.devices():
        print(f"clockwork-worker: runtime {config.runtime!r} found no devices on this host", file=sys.stderr)
        return 2
    if "onnx" in runtime.formats:
        from clockwork.common.models import preload_onnx_checks

        preload_onnx_checks()  # before joining: not in the prepare thread, starving the heartbeats
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        daemon = Daemon(config, runtime, log)
    except SecurityError as exc:  # keys unreadable, or no keys and a non-loopback address
        print(f"clockwork-worker: {exc}", file=sys.stderr)
        return 2
    except zmq.ZMQError as exc:
        print(f"clockwork-worker: cannot connect to {config.controller!r}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the metrics port is taken
        print(f"clockwork-worker: cannot start: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: daemon.stop())
    log.info("worker starting", worker=daemon.name, runtime=runtime.name, controller=config.controller,
             devices=[d.kind for d in runtime.devices()])
    tune_for_serving()
    with cpu_latency.held(config.cpu_wake_latency_us, log, config.keep_cores_awake):
        daemon.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
