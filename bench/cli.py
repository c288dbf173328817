"""`clockwork-bench`: the demo and the benchmarks.

    clockwork-bench demo [--duration 30] [--rate 500] ...   the whole system under load
    clockwork-bench overhead [--requests 3000]              system overhead vs a bare relay
    clockwork-bench predictability ...                      latency predictability study
    clockwork-bench gpu-check [--dry-run]                   a lent GPU host, end to end

Each subcommand's options: `clockwork-bench SUBCOMMAND --help`.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from clockwork.common import version

# name -> (module whose main(argv) runs it, one line of help). Imported only when chosen, so
# one missing optional module (or GPU library) never breaks the others.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("clockwork.bench.demo", "controller + onnxruntime and emulated workers under an open-loop load"),
    "overhead": ("clockwork.bench.overhead", "end-to-end latency minus exec, beside a bare ZeroMQ relay"),
    "transport": ("clockwork.bench.transport", "one round trip between two processes: ZeroMQ against raw TCP, by size"),
    "predictability": ("clockwork.bench.predictability", "exec percentiles through the worker vs onnxruntime called directly"),
    "gpu-check": ("clockwork.bench.gpu_check", "on a lent GPU: install what was carried, build PyCUDA, GPU tests, measure"),
    "gateway": ("clockwork.bench.gateway_bench", "KServe v2 gateway overhead vs the native client, and its request rate"),
    "sim": ("clockwork.bench.sim", "virtual-time simulator: the real scheduling core against emulated GPUs, or a baseline"),
    "sweep": ("clockwork.bench.sweep", "simulated schedulers across offered loads: goodput, SLO misses and p99 in one plot"),
    "run": ("clockwork.bench.run", "the real system under a workload, with a full run report"),
    "versus": ("clockwork.bench.versus", "a real ONNX model on this system vs a plain FIFO server, same schedule, rate by rate"),
    "many-models": ("clockwork.bench.many_models", "every control path (ls, status, list, gateway, metrics) with 4,026 models"),
    "big-model": ("clockwork.bench.big_model", "a 1 GiB ONNX model uploads and serves while other models serve: SLO, RSS"),
    "soak": ("clockwork.bench.soak", "minutes of mixed load with cancels and expiries: memory, descriptors and core tables stay bounded"),
    "capacity": ("clockwork.bench.capacity", "highest rate within the SLO, as a ratio to the generator's echo and relay ceilings"),
    "overload": ("clockwork.bench.overload", "goodput, admitted requests' SLO and memory at 3x a device-bound capacity"),
    "chaos": ("clockwork.bench.chaos", "kill and freeze workers, restart the controller under load; check invariants"),
    "multihost": ("clockwork.bench.multihost", "workers on network namespaces behind shaped links, CURVE on: vs loopback, skewed clocks, link faults"),
    "fuzz": ("clockwork.bench.fuzz", "fuzz every decoder of untrusted bytes"),
    "codec": ("clockwork.bench.codec_compare", "the codec on the messages every request makes, and by its checks alone"),
}


# Modules that come with an extra (setup.cfg), so a missing one can name what to install.
EXTRA_OF = {"hdrh": "bench", "matplotlib": "bench", "aiohttp": "gateway", "orjson": "gateway", "tritonclient": "gateway",
            "grpc": "gateway", "torch": "torch", "onnx2torch": "torch", "nnef_tools": "nnef"}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: clockwork-bench SUBCOMMAND [options]", "", "subcommands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Options of a subcommand: clockwork-bench SUBCOMMAND --help"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"clockwork-bench {version()}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"clockwork-bench: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing in EXTRA_OF:
            extra = EXTRA_OF[missing]
            print(f"clockwork-bench {name} needs the {extra} extra: pip install 'clockwork-serving[{extra}]' "
                  f"({missing} is missing)", file=sys.stderr)
            return 2
        if exc.name != module_name:
            raise  # a real import error inside the module: show it
        print(f"clockwork-bench: {name} is not available in this installation ({module_name} is missing)",
              file=sys.stderr)
        return 2
    code = module.main(rest)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
