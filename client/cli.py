"""`clockwork`: the command line for a Clockwork controller.

    clockwork upload resnet50.onnx --name resnet50 --input-shape data=3,224,224
    clockwork ls
    clockwork status [--json]
    clockwork infer resnet50 --input x.npy --slo-ms 50 [--output out.npz]
    clockwork rm resnet50

Exit codes: 0 done; 1 the controller (or the client's own timeout) refused, printed as
"error: STATUS_NAME (code N): detail"; 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import numpy as np

from common.schema import FORMATS
from client import protocol
from client.errors import ClockworkError
from client.protocol import InferResult
from client.sync import Client


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
            rows.append([w.get("name"), w.get("runtime"), w.get("alive"), d.get("device_id"), d.get("kind"),
                         size(d.get("memory_bytes")), size(d.get("used_bytes")), d.get("busy_until_ms"),
                         d.get("loaded")])
    parts = [table(["WORKER", "RUNTIME", "ALIVE", "DEVICE", "KIND", "MEMORY", "USED", "BUSY_UNTIL_MS", "LOADED"],
                   rows) if rows else "no workers"]
    models = [m for m in body.get("models") or [] if isinstance(m, dict)]
    parts.append(table(["MODEL", "QUEUED", "IN_FLIGHT", "RESIDENT_ON"],
                       [[m.get("name"), m.get("queued"), m.get("in_flight"), m.get("resident_on")] for m in models])
                 if models else "no models")
    counters = body.get("counters")
    if isinstance(counters, dict) and counters:
        parts.append(table(["COUNTER", "VALUE"], sorted(counters.items(), key=lambda kv: str(kv[0]))))
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
    parser = argparse.ArgumentParser(prog="clockwork", description="Talk to a Clockwork controller.")
    parser.add_argument("--endpoint", default=protocol.default_endpoint(),
                        help="controller client endpoint (default: $CLOCKWORK_ENDPOINT or %(default)s)")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="how long admin commands wait for the controller (default 30; upload 300)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("upload", help="register a model (ONNX file, or a .json latency profile)")
    up.add_argument("file")
    up.add_argument("--name", help="model name (default: the file's stem)")
    up.add_argument("--input-shape", action="append", default=[], metavar="NAME=D1,D2,...",
                    help="fix an input's dynamic non-batch dims, e.g. data=3,224,224 (repeatable)")
    up.add_argument("--max-batch", type=int, default=0, help="largest batch to serve (default: model's, max 16)")
    up.add_argument("--replace", action="store_true", help="replace a model of the same name")
    up.add_argument("--format", choices=FORMATS, help="default: profile for .json files, else onnx")

    ls = sub.add_parser("ls", help="list models")
    ls.add_argument("--json", action="store_true", help="print the raw reply as JSON")

    st = sub.add_parser("status", help="workers, devices, models and counters")
    st.add_argument("--json", action="store_true", help="print the raw reply as JSON")

    inf = sub.add_parser("infer", help="run a model once and print its outputs and timing")
    inf.add_argument("name")
    inf.add_argument("--input", action="append", required=True, metavar="[NAME=]FILE",
                     help="x.npy (batch dim first) for a single-input model, NAME=x.npy per input, or one .npz")
    inf.add_argument("--slo-ms", type=float, required=True, help="latency objective in milliseconds")
    inf.add_argument("--priority", type=int, default=0, help="0 (lowest, default) to 9")
    inf.add_argument("--output", metavar="FILE.npz", help="save the outputs")

    rm = sub.add_parser("rm", help="remove a model")
    rm.add_argument("name")
    return parser


# ----------------------------------------------------------------------------- commands


def cmd_upload(cw: Client, args: argparse.Namespace) -> str:
    shapes = dict(parse_shape(s) for s in args.input_shape)
    info = cw.upload(args.file, args.name, format=args.format, input_shapes=shapes, max_batch=args.max_batch,
                     replace=args.replace)
    return render_model(info)


def cmd_ls(cw: Client, args: argparse.Namespace) -> str:
    models = cw.list()
    return json.dumps(models, indent=2, default=str) if args.json else render_models(models)


def cmd_status(cw: Client, args: argparse.Namespace) -> str:
    body = cw.status()
    return json.dumps(body, indent=2, default=str) if args.json else render_status(body)


def cmd_infer(cw: Client, args: argparse.Namespace) -> str:
    inputs = load_inputs(args.input)
    result = cw.infer(args.name, inputs, slo_ms=args.slo_ms, priority=args.priority)
    if args.output:
        np.savez(args.output, **result.outputs)
    return render_result(result)


def cmd_rm(cw: Client, args: argparse.Namespace) -> str:
    cw.remove(args.name)
    return f"removed {args.name}"


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], str]] = {
    "upload": cmd_upload, "ls": cmd_ls, "status": cmd_status, "infer": cmd_infer, "rm": cmd_rm,
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage (or --help)
        return exc.code if isinstance(exc.code, int) else 2
    timeouts: Mapping[str, float] = {} if args.timeout is None else {"timeout_s": args.timeout,
                                                                       "upload_timeout_s": args.timeout}
    try:
        with Client(args.endpoint, **timeouts) as cw:
            print(COMMANDS[args.command](cw, args))
    except ClockworkError as err:
        print(f"error: {err.status.name} (code {err.code}): {err.detail}", file=sys.stderr)
        return 1
    except UsageError as err:
        print(f"clockwork {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:  # e.g. an unreadable model file, a bad --timeout
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
