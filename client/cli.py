"""`clockwork`: the command line for a Clockwork controller.

    clockwork upload resnet50.onnx --name resnet50 --input-shape data=3,224,224
    clockwork ls [--prefix res] [--limit N] [--json]
    clockwork show resnet50 [--json]
    clockwork status [--json | --watch [--interval 2]] [--models 50]
    clockwork infer resnet50 --input x.npy --slo-ms 50 [--output out.npz]
    clockwork rm resnet50
    clockwork keys generate --out /etc/clockwork/keys --name alice
    clockwork build-engine resnet50.onnx --gpu 0 --config worker.toml   (on a GPU host, no controller)

Several pools: --endpoint tcp://a:5555,tcp://b:5555 (or $CLOCKWORK_ENDPOINT so) sends a command
about one model to the pool that owns it (client/pools.py), and ls and status to every pool.

Keys: against a controller with keys configured, give --key (your NAME.key_secret) and
--server-key (the controller's NAME.key), or set $CLOCKWORK_KEY and $CLOCKWORK_SERVER_KEY.

Exit codes: 0 done (also when a --watch is ended with Ctrl-C); 1 the controller (or the client's
own timeout) refused, printed as "error: STATUS_NAME (code N): detail"; 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import numpy as np

from clockwork.common import security, version
from clockwork.common.checks import BadMessage
from clockwork.common.models import ISOLATED_CHECK_BYTES, signature_of  # big ONNX: checked by the controller
from clockwork.common.schema import FORMATS, STATUS_MODELS
from clockwork.common.status import Fault, Status
from clockwork.client import nnef, pools, protocol
from clockwork.client.errors import CapacityError, ClockworkError, DeadlineExceeded, RequestError, Unreachable, error_for
from clockwork.client.protocol import InferResult, detect_format
from clockwork.client.sync import Client


class UsageError(Exception):
    """A command line that cannot be run as given (exit 2)."""


# ----------------------------------------------------------------------------- rendering


def cell(value: Any) -> str:
    """One value as table text; anything missing renders as "-"."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={cell(v)}" for k, v in value.items())
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    texts = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in texts]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in texts]
    return "\n".join(lines)


def size(num_bytes: Any) -> str:
    if isinstance(num_bytes, bool) or not isinstance(num_bytes, (int, float)):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(num_bytes) < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return "-"  # unreachable


def tensors(specs: Any) -> str:
    """[{"name": "data", "dtype": "float32", "shape": [3, 224, 224]}] -> data:float32[3,224,224]"""
    if not isinstance(specs, list):
        return "-"
    out = []
    for spec in specs:
        if isinstance(spec, dict):
            shape = spec.get("shape")
            dims = ",".join(map(str, shape)) if isinstance(shape, list) else "?"
            out.append(f"{spec.get('name', '?')}:{spec.get('dtype', '?')}[{dims}]")
    return " ".join(out) or "-"


def exec_times(exec_ms: Any) -> str:
    if not isinstance(exec_ms, dict):
        return "-"
    ordered = sorted(exec_ms.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 0)
    return " ".join(f"b{k}:{cell(v)}" for k, v in ordered) or "-"


def render_models(models: list[dict]) -> str:
    if not models:
        return "no models"
    rows = [[m.get("name"), m.get("format"), m.get("max_batch"), tensors(m.get("inputs")),
             tensors(m.get("outputs")), size(m.get("size_bytes")), m.get("prepared_on"),
             m.get("load_ms"), exec_times(m.get("exec_ms"))] for m in models]
    return table(["NAME", "FORMAT", "MAX_BATCH", "INPUTS", "OUTPUTS", "SIZE", "PREPARED_ON", "LOAD_MS",
                  "EXEC_MS"], rows)


def some(names: Any, count: Any, most: int = 2) -> str:
    """At most `most` names of `count` in all, e.g. "a,b +38", so that a column stays narrow
    (a STATUS lists only a few names per device and per model anyway); "-" for none."""
    shown = [n for n in names if isinstance(n, str)][:most] if isinstance(names, list) else []
    total = count if isinstance(count, int) and not isinstance(count, bool) else len(shown)
    more = f" +{total - len(shown)}" if total > len(shown) else ""
    return (cell(shown) + more) if shown else (str(total) if total else "-")


def status_models(body: dict) -> list[dict]:
    return [m for m in body.get("models") or [] if isinstance(m, dict)]


def model_table(body: dict, headers: Sequence[str], rows: list[list]) -> str:
    """The models table of a STATUS, and under it how many models it leaves out: a STATUS
    lists only the busiest (50 by default) of what may be thousands."""
    total = body.get("models_total")
    more = total - len(rows) if isinstance(total, int) and not isinstance(total, bool) else 0
    note = (f"… and {more} more model{'s' if more > 1 else ''} (the busiest {len(rows)} are shown: --models N for more, "
            "`clockwork ls` for every one)") if more > 0 else ""
    if not rows:
        return note or "no models"
    return table(headers, rows) + (f"\n{note}" if note else "")


def render_model(info: dict) -> str:
    keys = [("name", info.get("name")), ("format", info.get("format")), ("max batch", info.get("max_batch")),
            ("inputs", tensors(info.get("inputs"))), ("outputs", tensors(info.get("outputs"))),
            ("size", size(info.get("size_bytes"))), ("sha256", info.get("sha256")),
            ("prepared on", info.get("prepared_on")), ("load ms", info.get("load_ms")),
            ("exec ms", exec_times(info.get("exec_ms")))]
    return "\n".join(f"{k + ':':<13}{cell(v)}" for k, v in keys)


def render_status(body: dict) -> str:
    workers = [w for w in body.get("workers") or [] if isinstance(w, dict)]
    rows = []
    for w in workers:
        devices = [d for d in w.get("devices") or [] if isinstance(d, dict)] or [{}]
        for d in devices:
            rows.append([w.get("name"), w.get("runtime"), w.get("alive"), w.get("dispatch_ms"), d.get("device_id"),
                         d.get("kind"), size(d.get("memory_bytes")), size(d.get("used_bytes")), d.get("busy_ms"),
                         some(d.get("loaded"), d.get("loaded_count"))])
    # DISPATCH_MS: the worker's own allowance from an EXEC's sending to its lane starting it,
    # learned from its link and host (docs/operations.md, multi-host).
    parts = [table(["WORKER", "RUNTIME", "ALIVE", "DISPATCH_MS", "DEVICE", "KIND", "MEMORY", "USED", "BUSY_MS",
                    "LOADED"],
                   rows) if rows else "no workers"]
    parts.append(model_table(body, ["MODEL", "QUEUED", "IN_FLIGHT", "RESIDENT_ON"], [
        [m.get("name"), m.get("queued"), m.get("in_flight"), some(m.get("resident_on"), m.get("replicas"))]
        for m in status_models(body)]))
    scheduler = body.get("scheduler")
    if isinstance(scheduler, dict) and scheduler:
        parts.append(table(["SCHEDULER", "VALUE"], sorted(scheduler.items(), key=lambda kv: str(kv[0]))))
    counters = body.get("counters")
    if isinstance(counters, dict) and counters:
        parts.append(table(["COUNTER", "VALUE"], sorted(counters.items(), key=lambda kv: str(kv[0]))))
    return "\n\n".join(parts)


def _count(counters: Mapping, prefix: str) -> float:
    """Sum of the counters named `prefix` or starting with it (e.g. "rejected_")."""
    total = 0.0
    for name, value in counters.items():
        if (name == prefix or (prefix.endswith("_") and str(name).startswith(prefix))) \
                and isinstance(value, (int, float)) and not isinstance(value, bool):
            total += value
    return total


def _served(counters: Mapping) -> float:
    """Requests answered or refused, less those refused for the caller's own fault (bad input,
    unknown model, cancelled): the denominator of SLO attainment, as in the metrics."""
    total = 0.0
    for name, value in counters.items():
        prefix, _, status = str(name).partition("_")
        if prefix in ("answered", "rejected") and isinstance(value, (int, float)) and not isinstance(value, bool):
            known = Status.__members__.get(status.upper())
            total += 0 if known is not None and known.fault is Fault.CALLER else value
    return total


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole > 0 else "-"


def render_watch(body: dict, previous: dict | None, elapsed_s: float, header: str) -> str:
    """One frame of `status --watch`: workers and devices, models, then request rates over the
    last refresh (counter deltas; "-" on the first frame) and SLO attainment. A device's UTIL and
    a model's own rate and attainment appear when the controller's status carries the counts
    they come from (a device's `exec_busy_ns`; a model's `answered` and `met_slo`)."""
    counters = body.get("counters") if isinstance(body.get("counters"), dict) else {}
    prev = previous if isinstance(previous, dict) else {}
    before = prev.get("counters") if isinstance(prev.get("counters"), dict) else None
    dt = elapsed_s if before is not None and elapsed_s > 0 else 0.0
    before = before or {}

    def per_s(now: float, then: float) -> str:
        return f"{(now - then) / dt:.1f}" if dt else "-"

    busy_before = {(w.get("name"), d.get("device_id")): d.get("exec_busy_ns")
                   for w in prev.get("workers") or [] if isinstance(w, dict)
                   for d in w.get("devices") or [] if isinstance(d, dict)}
    rows = []
    for w in [w for w in body.get("workers") or [] if isinstance(w, dict)]:
        for d in [d for d in w.get("devices") or [] if isinstance(d, dict)] or [{}]:
            busy, then = d.get("exec_busy_ns"), busy_before.get((w.get("name"), d.get("device_id")))
            util = _percent((busy - then) / 1e9, dt) if dt and isinstance(busy, int) and isinstance(then, int) else "-"
            rows.append([w.get("name"), w.get("alive"), d.get("device_id"), d.get("kind"),
                         f"{size(d.get('used_bytes'))} / {size(d.get('memory_bytes'))}", util, d.get("busy_ms"),
                         some(d.get("loaded"), d.get("loaded_count")), some(d.get("loading"), d.get("loading_count"))])
    parts = [header, table(["WORKER", "ALIVE", "DEVICE", "KIND", "MEMORY", "UTIL", "BUSY_MS", "LOADED", "LOADING"],
                           rows) if rows else "no workers"]
    old = {m.get("name"): m for m in prev.get("models") or [] if isinstance(m, dict)}
    mrows = []
    for m in status_models(body):
        o = old.get(m.get("name"), {})
        counted = all(isinstance(x.get(k), int) for x in (m, o) for k in ("answered", "met_slo"))
        answered = m.get("answered", 0) - o.get("answered", 0) if counted else 0
        mrows.append([m.get("name"), m.get("queued"), m.get("in_flight"), some(m.get("resident_on"), m.get("replicas")),
                      per_s(answered, 0) if counted else "-",
                      _percent(m["met_slo"] - o["met_slo"], answered) if counted and dt else "-"])
    parts.append(model_table(body, ["MODEL", "QUEUED", "IN_FLIGHT", "RESIDENT_ON", "REQ/S", "SLO"], mrows))
    finished, finished_before = _served(counters), _served(before)
    met, met_before = _count(counters, "met_slo"), _count(before, "met_slo")
    parts.append(
        f"requests/s: offered {per_s(_count(counters, 'requests_offered'), _count(before, 'requests_offered'))}, "
        f"served {per_s(_count(counters, 'answered_ok'), _count(before, 'answered_ok'))}, "
        f"goodput {per_s(met, met_before)}, "
        f"refused {per_s(_count(counters, 'rejected_'), _count(before, 'rejected_'))}\n"
        f"SLO attainment: {_percent(met - met_before, finished - finished_before) if dt else '-'} last interval, "
        f"{_percent(met, finished)} since the controller started")
    return "\n\n".join(parts)


def render_result(result: InferResult, values: int = 6) -> str:
    lines = []
    for name, array in result.outputs.items():
        flat = array.reshape(-1)
        shown = np.array2string(flat[:values], precision=4, separator=", ")
        if flat.size > values:
            shown = shown[:-1] + ", ...]"
        lines.append(f"{name}: {array.dtype} {list(array.shape)}  {shown}")
    cold = ", cold start" if result.cold_start else ""
    lines.append(f"timing: queue {result.queue_ms:.3f} ms, exec {result.exec_ms:.3f} ms, "
                 f"total {result.total_ms:.3f} ms (batch {result.batch_size} on {result.worker or '-'}{cold})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- arguments


def parse_shape(text: str) -> tuple[str, list[int]]:
    """"data=3,224,224" -> ("data", [3, 224, 224])"""
    name, sep, dims = text.rpartition("=")
    try:
        parsed = [int(d) for d in dims.replace("x", ",").split(",") if d.strip()]
    except ValueError:
        parsed = []
    if not sep or not name or not parsed:
        raise UsageError(f"--input-shape {text!r}: expected NAME=D1,D2,... (batch dim excluded), e.g. data=3,224,224")
    return name, parsed


def load_inputs(specs: Sequence[str]) -> dict[str, np.ndarray] | np.ndarray:
    """--input values: NAME=x.npy (repeatable), one bare x.npy for a single-input model, or one
    bare inputs.npz holding every input by name."""
    named: dict[str, np.ndarray] = {}
    bare = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if sep and name and not os.path.exists(spec):
            named[name] = _load_array(path)
        else:
            bare.append(spec)
    if bare and (named or len(bare) > 1):
        raise UsageError("give one bare --input file (single-input model or .npz), or NAME=FILE for each input")
    return named or _load_array(bare[0])


def _load_array(path: str) -> Any:
    """An array from .npy, or {name: array} from .npz; never unpickles."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise OSError(f"cannot read {path!r}: {exc}") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            return {k: data[k] for k in data.files}
    return data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clockwork", description="Talk to a Clockwork controller.",
                                     epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("--endpoint", default=protocol.default_endpoint(),
                        help="controller client endpoint, or several pools' separated by commas "
                             "(default: $CLOCKWORK_ENDPOINT or %(default)s)")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="how long admin commands wait for the controller (default 30; upload 300)")
    parser.add_argument("--key", default=None, metavar="FILE",
                        help="your secret key file, NAME.key_secret (default: $CLOCKWORK_KEY)")
    parser.add_argument("--server-key", default=None, metavar="FILE",
                        help="the controller's public key file, NAME.key (default: $CLOCKWORK_SERVER_KEY)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("upload", help="register a model (ONNX file, NNEF folder or .nnef.tgz, or a .json latency profile)")
    up.add_argument("file")
    up.add_argument("--name", help="model name (default: the file's stem)")
    add_shape_arguments(up)
    up.add_argument("--replace", action="store_true", help="replace a model of the same name")
    up.add_argument("--format", choices=(*FORMATS, "nnef"),
                    help="default: nnef for a folder with graph.nnef or a .nnef(.tgz) path (converted to ONNX "
                         "here), profile for .json files, else onnx")

    ls = sub.add_parser("ls", help="list models (every one, page by page)")
    ls.add_argument("--prefix", default="", help="only models whose names start with this")
    ls.add_argument("--limit", type=int, default=0, metavar="N", help="show at most N models (default: all)")
    ls.add_argument("--json", action="store_true", help="print a JSON array of ModelInfo")

    show = sub.add_parser("show", help="one model's details")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print its ModelInfo as JSON")

    st = sub.add_parser("status", help="workers, devices, models and counters")
    st.add_argument("--json", action="store_true", help="print the raw reply as JSON")
    st.add_argument("--watch", action="store_true", help="a live table, refreshed until Ctrl-C")
    st.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="--watch refresh (default 2)")
    st.add_argument("--iterations", type=int, default=0, metavar="N", help="--watch: stop after N frames")
    st.add_argument("--models", type=int, default=STATUS_MODELS, metavar="N",
                    help="list the N busiest models (default %(default)s)")

    inf = sub.add_parser("infer", help="run a model once and print its outputs and timing")
    inf.add_argument("name", help="the model")
    # A metavar with brackets ("[NAME=]FILE") breaks argparse's wrapping of the usage line.
    inf.add_argument("--input", action="append", required=True, metavar="INPUT",
                     help="FILE.npy (batch dim first) for a single-input model, NAME=FILE.npy per input "
                          "(repeat --input), or one FILE.npz")
    inf.add_argument("--slo-ms", type=float, required=True, help="latency objective in milliseconds")
    inf.add_argument("--priority", type=int, default=0, help="0 (lowest, default) to 9")
    inf.add_argument("--output", metavar="FILE.npz", help="save the outputs")

    rm = sub.add_parser("rm", help="remove a model")
    rm.add_argument("name")

    keys = sub.add_parser("keys", help="make CURVE key pairs (no controller needed)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    gen = keys_sub.add_parser("generate", help="write NAME.key (public) and NAME.key_secret (0600)")
    gen.add_argument("--out", required=True, metavar="DIR", help="folder for the two files (created)")
    gen.add_argument("--name", required=True, help="e.g. controller, worker-gpu0, alice")
    gen.add_argument("--force", action="store_true", help="overwrite existing files of that name")

    eng = sub.add_parser("build-engine", help="build a TensorRT engine on a GPU of this host into the engine "
                         "cache, for workers with [worker.tensorrt] build_on = \"ahead\" (no controller needed)",
                         description="Give --input-shape and --max-batch as the upload will: they are part of the "
                                     "engine's name, as are the worker's [worker.tensorrt] settings.")
    eng.add_argument("file", help="the ONNX model, as it will be uploaded")
    eng.add_argument("--gpu", type=int, default=0, metavar="N",
                     help="CUDA GPU to build on (default 0); the engine serves every GPU of its kind")
    add_shape_arguments(eng)
    eng.add_argument("--config", metavar="FILE", help="the worker's TOML file: its engine_cache_dir and "
                     "[worker.tensorrt] settings decide where the engine goes and what it is built for")
    eng.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                     help="override one [worker] setting, as clockwork-worker --set does (repeatable)")
    return parser


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """--input-shape and --max-batch, which upload and build-engine must read alike."""
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME=D1,D2,...",
                        help="fix an input's dynamic non-batch dims, e.g. data=3,224,224 (repeatable)")
    parser.add_argument("--max-batch", type=int, default=0, help="largest batch to serve (default: model's, max 16)")


# ----------------------------------------------------------------------------- commands


def cmd_upload(cw: Client, args: argparse.Namespace) -> str:
    shapes = dict(parse_shape(s) for s in args.input_shape)
    info = cw.upload(args.file, args.name, format=args.format, input_shapes=shapes, max_batch=args.max_batch,
                     replace=args.replace, progress=UploadProgress(sys.stderr))
    return render_model(info)


class UploadProgress:
    """`progress` for a chunked upload: a line redrawn in place on a terminal, else a line per
    quarter; the last chunk's reply waits for the workers to prepare the model, which it says."""

    def __init__(self, stream):
        self.stream, self.tty, self._shown = stream, stream.isatty(), -1

    def __call__(self, sent: int, total: int) -> None:
        if sent == total:
            if self._shown >= 0:
                self.stream.write(("\n" if self.tty else "") + "uploaded; the workers have prepared it\n")
            return
        percent = 100 * sent // total
        if self.tty or percent // 25 > self._shown // 25:
            text = f"uploading: {percent}% ({sent / 1e6:.0f} of {total / 1e6:.0f} MB)"
            self.stream.write(f"\r{text}" if self.tty else text + "\n")
            self.stream.flush()
        self._shown = percent


def cmd_ls(cw: Client, args: argparse.Namespace) -> str:
    if args.limit < 0:
        raise UsageError(f"--limit {args.limit}: expected a number of models, 0 for all")
    models = cw.list(args.prefix, limit=args.limit)
    return json.dumps(models, indent=2, default=str) if args.json else render_models(models)


def cmd_show(cw: Client, args: argparse.Namespace) -> str:
    info = cw.model(args.name)
    return json.dumps(info, indent=2, default=str) if args.json else render_model(info)


def cmd_status(cw: Client, args: argparse.Namespace) -> str | None:
    if args.watch:
        return watch_status(cw, args.interval, args.iterations, models_limit=args.models)
    body = cw.status(args.models)
    return json.dumps(body, indent=2, default=str) if args.json else render_status(body)


def watch_status(cw: Client, interval_s: float, iterations: int = 0, out: Any = None,
                 models_limit: int = STATUS_MODELS) -> None:
    """Redraw the status every `interval_s` (clearing the screen on a terminal) until Ctrl-C or
    `iterations` frames. A controller that does not answer is shown, and asked again."""
    out = out or sys.stdout
    clear = "\x1b[H\x1b[2J" if out.isatty() else ""
    previous, previous_at, frames = None, 0.0, 0
    try:
        while True:
            started = time.monotonic()
            header = f"clockwork status  {cw.endpoint}  {time.strftime('%H:%M:%S')}  (every {interval_s:g} s)"
            try:
                body = cw.status(models_limit)
                frame = render_watch(body, previous, started - previous_at, header)
                previous, previous_at = body, started
            except ClockworkError as err:
                frame = f"{header}\n\ncontroller not answering: {err.status.name}: {err.detail}"
            out.write(clear + frame + ("\n" if clear else "\n\n"))
            out.flush()
            frames += 1
            if iterations and frames >= iterations:
                return None
            time.sleep(max(0.0, interval_s - (time.monotonic() - started)))
    except KeyboardInterrupt:  # the way out of a watch: not an error
        return None


def cmd_keys(args: argparse.Namespace) -> str:
    public, secret = security.generate(args.out, args.name, overwrite=args.force)
    return (f"public key: {public}  (give it out: to the controller's allow-list, or to clients and workers)\n"
            f"secret key: {secret}  (keep it; mode 0600)\n"
            f"z85 public: {security.load_public(public).decode()}")


def cmd_build_engine(args: argparse.Namespace) -> str:
    """Build on this host's GPU the engine a worker would build at PREPARE (worker/runtimes/
    engine_build.py; imported here only, so the rest of the CLI never loads worker code)."""
    import structlog

    from clockwork.common import config as cfg
    from clockwork.common.config import WorkerConfig
    from clockwork.worker.runtimes.base import RuntimeFailure
    from clockwork.worker.runtimes.engine_build import build_ahead

    worker = cfg.load(WorkerConfig, "worker", args.config, args.overrides)
    shapes = dict(parse_shape(s) for s in args.input_shape)
    if args.gpu < 0:
        raise UsageError(f"--gpu {args.gpu}: expected a CUDA GPU number, 0 or more")
    with open(args.file, "rb") as fh:
        blob = fh.read()
    try:
        done, path = build_ahead(blob, args.gpu, shapes, args.max_batch, worker, structlog.get_logger())
    except (RuntimeFailure, BadMessage) as exc:
        raise error_for(exc.status, exc.detail) from None
    key = done.key
    return (f"engine for {key.gpu_name} sm{''.join(map(str, key.compute_capability))}, TensorRT {key.trt_version}, "
            f"batch 1..{key.max_batch}, built in {done.seconds:.1f} s:\n{path}\n"
            "a worker with this engine_cache_dir and these [worker.tensorrt] settings uses it at PREPARE")


def cmd_infer(cw: Client, args: argparse.Namespace) -> str:
    inputs = load_inputs(args.input)
    result = cw.infer(args.name, inputs, slo_ms=args.slo_ms, priority=args.priority)
    if args.output:
        np.savez(args.output, **result.outputs)
    return render_result(result)


def cmd_rm(cw: Client, args: argparse.Namespace) -> str:
    cw.remove(args.name)
    return f"removed {args.name}"


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], str | None]] = {
    "upload": cmd_upload, "ls": cmd_ls, "show": cmd_show, "status": cmd_status, "infer": cmd_infer, "rm": cmd_rm,
}
# Commands that need no controller.
LOCAL_COMMANDS: dict[str, Callable[[argparse.Namespace], str]] = {"keys": cmd_keys, "build-engine": cmd_build_engine}


# Exit codes by error class, so scripts can tell them apart (also in `clockwork --help`).
EXIT_CODES_HELP = """exit codes:
  0  done
  1  internal error (the system failed; report it)
  2  usage error (bad flags)
  3  not found (no such model)
  4  bad input (a bad model file, input, shape or option; fix the request)
  5  no capacity now (would miss its deadline, queue full, no device can hold it; retry later)
  6  unavailable (no controller answered at the endpoint, or no worker can serve the model)
  7  deadline missed (no answer in time)
  130 interrupted"""
PROBE_TIMEOUT_S = 2.0  # how long a command waits to learn that nothing answers at the endpoint


def exit_code(err: ClockworkError) -> int:
    if isinstance(err, DeadlineExceeded) or err.status is Status.DEADLINE_MISSED:
        return 7
    if isinstance(err, Unreachable) or err.status in (Status.UNAVAILABLE, Status.NOT_PREPARED):
        return 6
    if err.status is Status.MODEL_NOT_FOUND:
        return 3
    if isinstance(err, RequestError):
        return 4
    if isinstance(err, CapacityError):
        return 5
    return 1


def probed(args: argparse.Namespace) -> str:
    """The endpoints a command needs answering: with several pools, only the owner of the model a
    command is about (another pool may be down meanwhile), else all of them."""
    try:
        endpoints = pools.endpoints(args.endpoint)
    except ValueError as exc:
        raise UsageError(f"--endpoint: {exc}") from None
    name = protocol.upload_name(args.file, args.name, args.format) if args.command == "upload" \
        else getattr(args, "name", None)
    return pools.owner(name, endpoints) if name and len(endpoints) > 1 else args.endpoint


def probe(endpoint: str | None, **keys: Any) -> None:
    """Fail within PROBE_TIMEOUT_S, saying where, when nothing answers at the endpoint (with
    several pools, at one of them), instead of after the command's own timeout (30 s; 300 s for
    an upload)."""
    with Client(endpoint, timeout_s=PROBE_TIMEOUT_S, **keys) as quick:
        try:
            quick.status(models_limit=0)
        except DeadlineExceeded:
            raise Unreachable(detail=f"no controller answered at {quick.endpoint} within {PROBE_TIMEOUT_S:g} s: "
                                     "is it running, and is the endpoint right (--endpoint, $CLOCKWORK_ENDPOINT)?"
                              ) from None


def check_model_file(path: str, fmt: str | None, input_shapes: dict, max_batch: int) -> None:
    """A file that is no model fails here at once, with the same reason the controller would give,
    even when no controller is running. (Large ONNX files are left to the controller.)"""
    fmt = fmt or detect_format(path)
    if os.path.isdir(path) or nnef.looks_like_nnef(path) or fmt == "nnef":
        return  # converted, and so checked, by the upload itself
    size = os.path.getsize(path)  # OSError: missing or unreadable
    if size == 0:
        raise error_for(Status.BAD_MODEL, f"{path} is empty")
    if size >= ISOLATED_CHECK_BYTES and fmt == "onnx":
        return
    with open(path, "rb") as fh:
        blob = fh.read()
    try:
        signature_of(fmt, blob, input_shapes, max_batch)
    except BadMessage as exc:
        raise error_for(exc.status, exc.detail) from None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage (or --help)
        return exc.code if isinstance(exc.code, int) else 2
    timeouts: dict[str, float] = {} if args.timeout is None else {"timeout_s": args.timeout,
                                                                     "upload_timeout_s": args.timeout}
    if args.command == "status" and args.watch and args.timeout is None:
        timeouts["timeout_s"] = max(1.0, args.interval)  # a dead controller shows up within a frame
    try:
        if args.command in LOCAL_COMMANDS:
            print(LOCAL_COMMANDS[args.command](args))
            return 0
        keys = dict(key_file=args.key, server_key_file=args.server_key)
        if args.command == "upload":
            check_model_file(args.file, args.format, dict(parse_shape(s) for s in args.input_shape), args.max_batch)
        needed = probed(args)  # checks --endpoint too
        if not (args.command == "status" and args.watch):  # a watch shows a dead controller itself
            probe(needed, **keys)
        with Client(args.endpoint, **timeouts, **keys) as cw:
            text = COMMANDS[args.command](cw, args)
            if text is not None:
                print(text)
    except ClockworkError as err:
        print(f"error: {err.status.name} (code {err.code}): {err.detail}", file=sys.stderr)
        return exit_code(err)
    except UsageError as err:
        print(f"clockwork {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:  # e.g. an unreadable model file, a bad --timeout
        print(f"error: {err}", file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
