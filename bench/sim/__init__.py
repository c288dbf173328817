"""Virtual-time simulator: the controller's real scheduling core against emulated GPUs.

`clockwork-bench sim` runs hours of traffic on hundreds of GPUs and thousands of models in
minutes, deterministically from a seed: no sockets, no threads, no sleeping. The core
(controller/core.py, or a baseline from controller/baseline.py) is the same object the daemon
drives; here a discrete-event loop feeds it events at virtual times and performs its effects.

| module | what it is |
|---|---|
| `config.py` | `SimConfig` (the cluster's knobs), `RunSpec` (one experiment) |
| `cluster.py` | the emulated workers: per GPU a LOAD and an EXEC lane with the worker's rules |
| `events.py` | `Simulation`: the event loop, calls into the core, clients and their replies |
| `summary.py` | a run's numbers, as text and JSON, and two schedulers compared |
| `runs.py` | the core by name, the workload, `run(spec)` |
| `cli.py` | the command line (`main`) |

Example:
    spec = RunSpec(sim=SimConfig(workers=4, devices_per_worker=4), models=400, rate_per_s=2000)
    summary = run(spec)
    print(format_result(summary))
"""

from clockwork.bench.sim.cli import main, parse_args, spec_from_args
from clockwork.bench.sim.config import GB, NS_PER_S, RunSpec, SimConfig, capacity_per_s
from clockwork.bench.sim.events import Outcome, Simulation
from clockwork.bench.sim.runs import SCHEDULERS, build_schedule, make_core, run
from clockwork.bench.sim.summary import comparison, format_comparison, format_result, summarize, write_summary
from clockwork.common.config import MS

__all__ = ["GB", "MS", "NS_PER_S", "SCHEDULERS", "Outcome", "RunSpec", "SimConfig", "Simulation", "build_schedule",
           "capacity_per_s", "comparison", "format_comparison", "format_result", "main", "make_core", "parse_args",
           "run", "spec_from_args", "summarize", "write_summary"]
