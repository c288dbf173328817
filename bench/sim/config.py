"""What a simulated experiment is made of: the cluster's knobs (`SimConfig`) and one run's
cluster, core and workload (`RunSpec`)."""

from __future__ import annotations

from dataclasses import dataclass

from clockwork.bench.models import RESNET50_V100
from clockwork.common.config import MIB, MS, SchedulerConfig

GB = 1_000_000_000
NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class SimConfig:
    """Every knob of the simulated cluster, with why its default is what it is."""

    # Cluster shape: 25 workers x 4 GPUs = 100 GPUs (a rack of 4-GPU hosts).
    workers: int = 25
    devices_per_worker: int = 4
    # Model memory per GPU (the acceptance setting: 16 GB of a 32 GB V100 for weights).
    device_memory_bytes: int = 16 * GB
    page_bytes: int = 16 * MIB  # the workers' page size (WorkerConfig.page_bytes)
    # One-way controller <-> worker message delay: a LAN hop plus Python's send/receive.
    network_delay_ns: int = 300_000
    # One-way client <-> controller delay; latency is measured at the client, so it counts twice.
    client_delay_ns: int = 0
    # Action durations = profile x exp(N(0, sigma^2)): GPU kernels vary by ~1% run to run.
    noise_sigma: float = 0.01
    # Rare stragglers (e.g. a clock-throttled GPU): this share of actions takes `outlier_factor` x.
    outlier_probability: float = 0.0
    outlier_factor: float = 3.0
    # PREPARE answered this long after it arrives (the emulated runtime reads a JSON profile).
    prepare_ns: int = 1 * MS
    # Workers heartbeat every SchedulerConfig.heartbeat_interval_ns (True) or never (False: the
    # core's worker timeout must then be longer than the run).
    heartbeats: bool = True
    # 0: tick after every distinct event time (exact). > 0: at most one tick per this interval
    # after events (a daemon that drains bursts before ticking); wake-ups still tick on time.
    tick_every_ns: int = 0
    # Floor between ticks when the core asks to be woken in the past (the daemon's MIN_POLL_MS).
    min_tick_gap_ns: int = 200_000
    # Models are uploaded at time 0; traffic starts this much later (all PREPAREs answered).
    warmup_ns: int = 1 * NS_PER_S
    # Requests sent in this first stretch of traffic are simulated but reported apart.
    measure_from_ns: int = 0
    # After the last arrival, run on at most this long for outstanding replies.
    drain_ns: int = 30 * NS_PER_S
    # Every message through the real codec (slow; a schema check of a whole run).
    wire: bool = False
    # controller.invariants.check_invariants after every call into the core (slow; for tests).
    check_invariants: bool = False
    seed: int = 0  # device noise; the workload has its own seed

    @property
    def gpus(self) -> int:
        return self.workers * self.devices_per_worker





def capacity_per_s(gpus: int, profile: dict = RESNET50_V100) -> float:
    """Requests a second the GPUs could run at most: the largest batch back to back, no loads.
    An upper bound: a many-model workload batches far less (see docs/simulator.md)."""
    largest = max(profile["exec_ms"], key=int)
    return gpus * int(largest) / (profile["exec_ms"][largest] / 1000.0)


@dataclass(frozen=True)
class RunSpec:
    """One simulated experiment: the cluster, the core, the workload."""

    scheduler: str = "clockwork"
    sim: SimConfig = SimConfig()
    sched: SchedulerConfig = SchedulerConfig()
    models: int = 4000
    slo_ms: float = 100.0
    workload: str = "azure"  # azure | poisson | bursty | closed
    rate_per_s: float = 10_000.0
    duration_s: float = 60.0
    zipf: float = 1.0
    workload_seed: int = 1
    clients: int = 1000  # closed loop
    think_ms: float = 0.0  # closed loop
    azure_csv: str = ""  # replay a real trace instead of the synthetic one
    azure_scale: float = 1.0
    azure_start_minute: int = 0
    max_batch: int = 16  # baselines: Triton's max batch size
    max_queue_delay_ms: float = 1.0  # baselines: Triton's max queue delay
    baseline_replicas: bool = False  # baselines: replicate hot models as the core does
    # Before the workload, one request per model, evenly spaced over this long (0: none): the
    # cluster starts warm instead of with a storm of thousands of cold starts. These requests,
    # like those in the first `sim.measure_from_ns` of the workload, are reported as warm-up.
    prewarm_s: float = 0.0


