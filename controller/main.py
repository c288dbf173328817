"""`clockwork-controller`: parse configuration, set up logging and signals, run the daemon."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from clockwork.common import config as cfg
from clockwork.common import cpu_latency
from clockwork.common import version
from clockwork.common.logsetup import configure


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="clockwork-controller", description=__doc__)
    parser.add_argument("--config", help="TOML file with a [controller] table")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set scheduler.schedule_ahead_ns=3000000")
    parser.add_argument("--client-endpoint", help="ROUTER for clients (default tcp://127.0.0.1:5555)")
    parser.add_argument("--worker-endpoint", help="ROUTER for workers (default tcp://127.0.0.1:5556)")
    parser.add_argument("--state-dir", help="registry and model files (default ./clockwork-state)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = list(args.set)
    for flag, key in (("client_endpoint", "client_endpoint"), ("worker_endpoint", "worker_endpoint"),
                      ("state_dir", "state_dir"), ("log_level", "log_level")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    try:
        config = cfg.load(cfg.ControllerConfig, "controller", args.config, overrides)
        log = configure(config.log_level, "controller")
    except (ValueError, OSError) as exc:
        print(f"clockwork-controller: bad configuration: {exc}", file=sys.stderr)
        return 2
    from clockwork.common.gc_tuning import tune_for_serving
    from clockwork.common.models import preload_onnx_checks
    from clockwork.controller.daemon import ControllerDaemon

    preload_onnx_checks()  # before serving: not in the loop at the first upload

    try:
        daemon = ControllerDaemon(config, log)
    except Exception as exc:  # e.g. address in use, unwritable state dir
        print(f"clockwork-controller: cannot start: {exc}", file=sys.stderr)
        return 1

    def stop(signum, _frame):
        daemon.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    tune_for_serving()
    try:
        with cpu_latency.held(config.cpu_wake_latency_us, log, config.keep_cores_awake):
            daemon.run()
    finally:
        daemon.close()
        log.info("controller stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
