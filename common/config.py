"""Configuration: every knob in a frozen dataclass with a default and a reason.

Files are TOML with one table per daemon (`[controller]`, `[controller.scheduler]`,
`[worker]`); `--set section.key=value` on the command line overrides a file. Unknown keys
and wrongly typed values are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MS = 1_000_000
MIB = 1024 * 1024
HOST_DEVICE_MEMORY_BYTES = 4096 * MIB  # pretend capacity of a CPU or emulated device


@dataclass(frozen=True)
class SchedulerConfig:
    # Plan EXECs this far ahead of a lane becoming free: covers controller->worker message
    # latency (~0.3 ms on loopback in Python) with room for a GC pause.
    schedule_ahead_ns: int = 5 * MS
    # Predicted exec time = this percentile of the recent successful measurements; high so
    # that a deadline met on paper is met in practice.
    latency_percentile: float = 99.0
    # How many recent measurements per (model, batch size, device kind) the percentile uses:
    # small enough to follow a throttling GPU, large enough that one outlier is not p99.
    latency_window: int = 32
    # Batch sizes the worker profiles and the planner may use (others are padded up).
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    # Allowance for the hop from the controller to a lane starting an action: the floor; the
    # core adds how late lanes have recently started (p99), up to max_dispatch_ns, so a host
    # short of CPU is planned further ahead instead of dropping actions as TOO_LATE.
    dispatch_ns: int = 1 * MS
    max_dispatch_ns: int = 20 * MS
    # Allowance for the reply's way back: every request is planned to finish this long before
    # its deadline, plus how long results have taken from the lane's end to the controller (p99,
    # the slowest worker's, measured; up to max_reply_ns), so that the client, not only the
    # controller, sees it in time: a worker 2 ms away gets its replies' hop planned. This floor
    # is the part the controller cannot time, its own answer and the hop to the client. With
    # 1 ms, `clockwork-bench overload` at 3x saw admitted replies reach the client 0.03-0.87 ms
    # late on the busy 2-core host (99.85-99.88% in SLO); with 2 ms, 99.92-99.94%. With a 1 ms
    # floor plus the measured hop, five runs gave 98.10-99.94% (one stalled), so it stays 2 ms.
    reply_ns: int = 2 * MS
    max_reply_ns: int = 20 * MS
    # Requests waiting per model before new ones get QUEUE_FULL: bounds memory under overload.
    max_queue_per_model: int = 4096
    # LOADs in flight per device (one copy lane), a later one sent only once the last booked
    # ends within the time EXECs are sent ahead (Core.load_slot_free). With one, the lane idled
    # from each LOAD's end until the controller had read its result and sent the next: 4,000
    # models at 2,000/s on 8 emulated devices made 570 LOADs/s and 71.5% in SLO where the
    # simulator, whose hops are short, made 828/s and 100% (docs/benchmarks.md, "4,000 models").
    max_loads_per_device: int = 2
    # A worker silent for this long is declared lost and its devices leave the plan: ten missed
    # heartbeats, so a GC pause or a busy core does not evict a healthy worker, while a dead or
    # frozen one is out of the plan within about a second.
    worker_timeout_ns: int = 1000 * MS
    # How often workers heartbeat (told in WELCOME), from the loop that watches their lanes.
    heartbeat_interval_ns: int = 100 * MS
    # How often the core's housekeeping runs (lost workers and results, expiry, replicas). A
    # queue near a miss is looked at this often, so a doomed request waits about this long at
    # most for its answer.
    housekeeping_ns: int = 1 * MS
    # Admission keeps this share of a request's budget unplanned: its estimate of when the
    # request finishes behind the queued work must leave that much before the deadline. Covers
    # what the estimate cannot see (LOADs placed later, lanes idling between actions) at the
    # price of refusing a few requests that would just have made it. It is the floor: while
    # more than `admission_miss_target` of admitted requests miss, the core widens the
    # headroom (up to `max_admission_headroom`), and narrows it again once they stop.
    admission_headroom: float = 0.05
    max_admission_headroom: float = 0.3
    admission_miss_target: float = 0.0001
    # Admission's dry run: a request admission would refuse as too late (WOULD_MISS_DEADLINE) is
    # queued and served instead, and counted (`dry_run_*` in STATUS's counters): how many it would
    # have refused, and how many of those were answered in time all the same. Lets an operator
    # see what admission would cost a workload before it refuses anything, and a benchmark see
    # whether its refusals are ones the device would have finished in time.
    admission_dry_run: bool = False
    # A model gets another replica when draining its queue on the replicas it has would take
    # more than this share of its most urgent request's remaining budget: early enough that the
    # LOAD (milliseconds) finishes before the queue outgrows the replicas.
    replicate_backlog_fraction: float = 0.5
    # Extra replicas of a model (beyond one) idle this long are unloaded, so memory follows
    # demand; the last replica stays until LRU eviction needs its pages.
    replica_idle_ns: int = 2000 * MS
    # A result this long past its action's window (latest start + predicted duration) is taken
    # as lost, and its requests answered instead of waiting for a reply that may never come. By
    # then they are late anyway: an EXEC cannot start after its latest start.
    result_grace_ns: int = 20 * MS
    # Emit an ActionRecord effect per finished action (for the action log); off costs nothing.
    record_actions: bool = False
    # An upload is answered by then even if a worker never says PREPARED (a large model on a
    # slow host takes tens of seconds to parse and profile).
    upload_wait_ns: int = 120_000 * MS
    # How often the dispatch allowance, the finish tail and the admission headroom follow the
    # measurements: often enough to follow a host getting busy, seldom enough that a refresh
    # sees ~1,000 requests at capacity (the headroom's miss target is judged per refresh).
    refresh_ns: int = 100 * MS
    # The headroom widens by this per refresh while admitted requests miss (by up to five times
    # this when they miss by the tens: controller/admission.py), and narrows by a
    # sixteenth of it per refresh without a miss: at equilibrium about one refresh in 17 sees a
    # miss, which keeps misses under the 0.01% target at ~1,000 admitted requests per refresh.
    headroom_step: float = 0.02
    # Admission looks at this many of a model's replicas: bounded work per request even for a
    # hot model replicated on a hundred GPUs (their backlogs differ only by the other models
    # they hold).
    admission_replicas: int = 4
    # After this many requests of a model refused on its estimates alone (nothing of it queued
    # or running, so no measurement can come to correct them), its worst measurements are
    # doubted (LatencyModel.doubt). On a lent H200 the slow first run after a LOAD made a
    # model's p99, and every later request with a 25 ms SLO was refused for good.
    doubt_after: int = 16
    # A model's queue is looked at for hopeless requests at least this often.
    expiry_recheck_ns: int = 5 * MS
    # How often hot models are checked for another replica (a LOAD takes milliseconds), and
    # idle extra replicas looked for (they idle for seconds before release).
    replication_check_ns: int = 10 * MS
    release_check_ns: int = 100 * MS
    # An answered request's id is remembered this long: a client resends a request it has no
    # reply for (every 250 ms by default), and a resend that crossed the answer on the wire
    # must not run the request a second time. The crossing takes a round trip: seconds are ample.
    answered_memory_ns: int = 2000 * MS


@dataclass(frozen=True)
class ControllerConfig:
    client_endpoint: str = "tcp://127.0.0.1:5555"  # ROUTER for clients
    worker_endpoint: str = "tcp://127.0.0.1:5556"  # ROUTER for workers
    state_dir: str = "./clockwork-state"  # registry database and model files
    max_model_bytes: int = 1024 * MIB  # uploads above this get TOO_LARGE
    log_level: str = "info"
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    # Keep off the CPU cores that workers on this host pin their EXEC lanes to (their HELLO says
    # which; common/affinity.py): on a CPU host the controller running there slows the lane's
    # EXECs past their predictions.
    avoid_lane_cores: bool = True
    # While the daemon runs, keep idle cores on this host within cpu_wake_latency_us of waking (a
    # CPU latency request, common/cpu_latency.py; 0: they poll): every hop of a request wakes a
    # core that idled since the last. False leaves the host's setting alone.
    keep_cores_awake: bool = True
    cpu_wake_latency_us: int = 0
    # An INFER that waited this share of its SLO in queues before the controller read it is
    # refused from its header alone (WOULD_MISS_DEADLINE), without a full decode. When the
    # controller falls behind, this keeps the queue in front of it short and its CPU for
    # requests that can still make it, instead of decoding ones that almost surely cannot.
    refuse_after_waiting: float = 0.5
    # Load shedding at the input (common/shedding.py): once requests have been read more than
    # shed_lag_ns late for a whole shed_interval_ns (with at least 64 read in it), those read
    # that late are refused unread (QUEUE_FULL) until one is read within it. 20 ms leaves a
    # 100 ms SLO most of its budget; 500 ms outlasts a burst of replica LOADs or a collector
    # pause (10 ms over 100 ms refused ~800 requests a run at 90% of capacity). 0: off.
    shed_lag_ns: int = 20_000_000
    shed_interval_ns: int = 500_000_000
    # Security (common/security.py). Empty secret_key_file: no keys, so both ROUTERs (and the
    # metrics endpoint) must be loopback addresses. With it, both are CURVE servers; the *_dir
    # settings are directories of NAME.key public keys allowed in (admins may also upload/remove).
    secret_key_file: str = ""
    client_keys_dir: str = ""
    admin_keys_dir: str = ""
    worker_keys_dir: str = ""
    # Prometheus endpoint, HOST:PORT; empty: off (and no metric is computed). Off by default
    # because a fixed port collides when several daemons share a host; the systemd example
    # configuration turns it on at 127.0.0.1:9464.
    metrics_address: str = ""
    # Models with a label of their own in per-model metrics; later ones share "_other". Each
    # costs ~120 series (mostly histogram buckets), so 20 models stay around 2,500 series.
    metrics_max_models: int = 20
    # SLO attainment, goodput and utilisation gauges cover this many recent seconds: long enough
    # to smooth a burst, short enough to show a change within a scrape or two.
    metrics_window_s: float = 60.0
    # One TSV row per answered INFER (common/rotating_log.py); empty: off.
    request_log_path: str = ""
    # One TSV row per finished action (the columns of bench/runlog.py's action log); "" = off.
    action_log_path: str = ""
    # Request and action logs rotate at this size, keeping this many old files: 64 MiB holds
    # about half a million rows, and 5 backups bound the disk at ~400 MiB.
    log_max_bytes: int = 64 * MIB
    log_backups: int = 5


@dataclass(frozen=True)
class TensorRTConfig:
    """Knobs of the tensorrt runtime (`[worker.tensorrt]`)."""

    # Shared execution memory per GPU (activations + tactic scratch of the one running engine).
    # 1 GiB holds e.g. ResNet-50 at batch 16 several times over; larger needs are refused at
    # PREPARE (TOO_LARGE) rather than left to fail at LOAD.
    workspace_bytes: int = 1024 * MIB
    # ...but never more than this share of a small GPU.
    workspace_max_fraction: float = 0.125
    # Tactic scratch the builder may plan for, as a share of the workspace: the other half is
    # left for activations, so that device_memory_size_v2 fits the workspace.
    builder_workspace_fraction: float = 0.5
    # Left out of the pages: the CUDA context, TensorRT's own allocations, fragmentation, and the
    # transient memory of prepare-time builds and checks.
    reserve_min_bytes: int = 512 * MIB
    reserve_fraction: float = 0.02
    # Tactics are tuned for this batch size (0: the model's max batch). Batching matters under
    # load, which is when latency matters most; at batch 1 the GPU has time to spare.
    opt_batch: int = 0
    # profile() reports this percentile of its timed runs for each batch size.
    profile_percentile: float = 99.0
    # Load every kernel when an engine is deserialized (LOAD), not at its first INFER: with
    # CUDA's default lazy loading the first INFER after each LOAD would be slower than the rest.
    # Sets CUDA_MODULE_LOADING=EAGER unless the environment already chose.
    eager_module_loading: bool = True
    # Where engines are built, always in a child process (worker/runtimes/engine_build.py):
    # "serving" (the GPU that will run it; EXECs overlapping a build are marked and left out of
    # the latency model), "gpu:N" (CUDA GPU N, of the same kind; no serving GPU is disturbed),
    # or "ahead" (never by the worker: `clockwork build-engine` fills the engine cache first).
    # "serving" needs no second GPU and no extra step, so it is the default.
    build_on: str = "serving"
    # A build still running after this long is stopped and the upload fails: large models take
    # minutes to build, a hung one should not hold the prepare thread for ever.
    build_timeout_s: float = 1800.0
    # Where TensorRT and PyCUDA come from: "module:function" returning trt_libs.GpuLibraries. The
    # default imports the real ones; tests name the fakes, which build children then use too.
    libraries: str = "clockwork.worker.runtimes.trt_libs:import_gpu_libraries"

    def __post_init__(self) -> None:
        if self.build_on not in ("serving", "ahead") and self.build_gpu is None:
            raise ValueError(f'[worker.tensorrt].build_on: expected "serving", "gpu:N" or "ahead", got {self.build_on!r}')
        if not self.build_timeout_s > 0:
            raise ValueError(f"[worker.tensorrt].build_timeout_s: must be > 0, got {self.build_timeout_s!r}")

    @property
    def build_gpu(self) -> int | None:
        """N of build_on = "gpu:N", else None."""
        kind, _, number = self.build_on.partition(":")
        return int(number) if kind == "gpu" and number.isdigit() else None


@dataclass(frozen=True)
class TorchConfig:
    """Knobs of the torch runtime (`[worker.torch]`)."""

    # "cuda": one device per visible GPU (up to `devices`). "cpu": `devices` CPU core sets with
    # `threads_per_lane` intra-op threads, for hosts without a GPU and for tests on CPU torch.
    device: str = "cuda"
    # Capture one CUDA graph per profiled batch size at LOAD, so an INFER is one graph launch
    # instead of hundreds of kernel launches from Python; models that cannot be captured (host
    # synchronisation, data-dependent shapes) run eagerly.
    cuda_graphs: bool = True
    # Left out of the pages: the CUDA context, cuBLAS/cuDNN workspaces, the caching allocator's
    # rounding and fragmentation.
    reserve_min_bytes: int = 1024 * MIB
    reserve_fraction: float = 0.05
    # profile() reports this percentile of its timed runs for each batch size.
    profile_percentile: float = 99.0


@dataclass(frozen=True)
class WorkerConfig:
    controller: str = "tcp://127.0.0.1:5556"
    name: str = ""  # empty: hostname-pid
    runtime: str = "onnxruntime"  # onnxruntime | emulated | tensorrt | torch
    devices: int = 1  # devices this process exposes (emulated: any number; CPU: core sets)
    # Model memory per device; 0: the runtime decides (a TensorRT device: the GPU's free memory
    # less workspace and reserve; CPU and emulated devices, which have no natural limit:
    # HOST_DEVICE_MEMORY_BYTES).
    device_memory_bytes: int = 0
    page_bytes: int = 16 * MIB  # memory is accounted in pages of this size (Clockwork's value)
    # onnxruntime intra-op threads per EXEC lane. 1: measured here, 2 threads on 2 shared cores
    # put p99 at 9-22x the median; 1 thread keeps it at 1.1-1.4x.
    threads_per_lane: int = 1
    # onnxruntime: give each device's EXEC lane a core of its own (CPU affinity; the worker's
    # other threads keep off it), as a GPU is a device of its own. Needs one thread per lane and
    # a core left over; the controller and other processes are kept off it by the operator
    # (systemd CPUAffinity=, taskset).
    pin_lanes: bool = True
    # As [controller]'s: an EXEC and its result do not wait for a core to leave a deep idle state.
    keep_cores_awake: bool = True
    cpu_wake_latency_us: int = 0
    # Where workers on this host claim their lanes' cores (a lock file per core), so that two
    # workers' lanes never share one. Every worker of a host must name the same folder; "":
    # /dev/shm/clockwork-lane-cores (the system's temporary folder where there is no /dev/shm).
    lane_claims_dir: str = ""
    profile_runs: int = 10  # timed runs per batch size at PREPARE (after warm-up calls: worker/runtimes/base.py)
    engine_cache_dir: str = "~/.cache/clockwork/engines"  # TensorRT plans, per GPU kind
    log_level: str = "info"
    # Security (common/security.py): this worker's key pair (NAME.key_secret) and the
    # controller's public key (NAME.key). Both or neither; neither: the controller endpoint must
    # be a loopback address. With them, only the holder of the controller's secret key can
    # command this worker.
    secret_key_file: str = ""
    controller_public_key_file: str = ""
    # Prometheus endpoint, HOST:PORT; empty: off. Give each worker on a host its own port.
    metrics_address: str = ""
    metrics_max_models: int = 20  # as [controller].metrics_max_models
    metrics_window_s: float = 60.0  # as [controller].metrics_window_s
    tensorrt: TensorRTConfig = field(default_factory=TensorRTConfig)
    torch: TorchConfig = field(default_factory=TorchConfig)


T = TypeVar("T")


def load(cls: type[T], section: str, path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Build `cls` from the TOML file's `[section]` table, then `key=value` overrides."""
    data: dict[str, Any] = {}
    if path:
        with open(path, "rb") as fh:
            data = tomllib.load(fh).get(section, {})
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        _set_path(data, key.strip().split("."), _parse_value(raw.strip()))
    return build(cls, data, section)


def build(cls: type[T], data: dict[str, Any], where: str) -> T:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"[{where}]: unknown setting(s) {', '.join(sorted(unknown))}")
    values = {}
    for name, value in data.items():
        default = _default(known[name])
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ValueError(f"[{where}].{name}: expected a table")
            values[name] = build(type(default), value, f"{where}.{name}")
        else:
            values[name] = _coerce(value, default, f"[{where}].{name}")
    return cls(**values)


def _default(fld: dataclasses.Field) -> Any:
    if fld.default_factory is not dataclasses.MISSING:
        return fld.default_factory()
    return fld.default


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, tuple):
        ok = isinstance(value, (list, tuple))
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ValueError(f"{where}: expected {type(default).__name__}, got {value!r}")
    _check_range(value, default, where)
    return value


def _check_range(value: Any, default: Any, where: str) -> None:
    """Every number here is a count, a size, a duration, a share or a percentile: none is
    negative, shares stay within 0..1 and percentiles within 0..100 (by the setting's name), and
    a tuple holds values of its default's element type, e.g. batch sizes that are positive ints."""
    name = where.rsplit(".", 1)[-1].rstrip("]")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{where}: must be a finite number >= 0, got {value!r}")
        if name.endswith("percentile") and not 0 < value <= 100:
            raise ValueError(f"{where}: a percentile is within (0, 100], got {value!r}")
        if name.endswith(("fraction", "headroom")) and value > 1:
            raise ValueError(f"{where}: a share is within [0, 1], got {value!r}")
    if isinstance(value, tuple) and default:
        kind = type(default[0])
        if any(type(v) is not kind for v in value):
            raise ValueError(f"{where}: expected a list of {kind.__name__}, got {list(value)!r}")
        if kind is int and (not value or any(v < 1 for v in value) or list(value) != sorted(set(value))):
            raise ValueError(f"{where}: expected positive integers in ascending order, got {list(value)!r}")


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare word is a string


def _set_path(data: dict, keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        data = data.setdefault(key, {})
    data[keys[-1]] = value


def as_dict(config: Any) -> dict:
    return dataclasses.asdict(config)
