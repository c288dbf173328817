"""What a model looks like from outside: its input and output tensors and batch limit.

The controller reads this at upload (to refuse bad models and bad requests without bothering a
worker); workers read it at PREPARE. Two formats exist: ONNX bytes, and a JSON latency profile
that only the emulated runtime serves. The first dimension of every input is the batch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from clockwork.common import checks as c
from clockwork.common.checks import BadMessage
from clockwork.common.status import Status
from clockwork.common.tensors import DTYPE_SIZES, Tensor, describe_tensor

DEFAULT_MAX_BATCH = 16  # the largest batch size profiled unless the uploader asks otherwise


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]  # without the batch dimension; -1 marks a dim only the run decides

    def header(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch: int

    def header(self) -> dict:
        return {
            "inputs": [t.header() for t in self.inputs],
            "outputs": [t.header() for t in self.outputs],
            "max_batch": self.max_batch,
        }


def _bad(detail: str) -> BadMessage:
    return BadMessage(Status.BAD_MODEL, detail)


def _limit_batch(model_limit: int | None, requested: int) -> int:
    limit = requested or DEFAULT_MAX_BATCH
    return min(limit, model_limit) if model_limit else limit


# ----------------------------------------------------------------------------- ONNX


def preload_onnx_checks() -> None:
    """Run `onnx_signature` once on a one-node model, at a daemon's start. onnx is imported
    where it is used, so that clients and CLIs do not pay for it; but its first import takes
    0.3 s, and ~1 s on a slow host's fresh install (compiling its bytecode), all of it holding
    the GIL. Done lazily inside a serving daemon, a fresh install's first upload held the
    controller's loop and a worker's heartbeats past the 1 s worker timeout: both workers were
    declared lost and the upload refused (the README session of tests/test_packaging.py)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "preload", [x], [y])
    onnx_signature(helper.make_model(graph).SerializeToString(), {})


def onnx_signature(model_bytes: bytes, input_shapes: dict[str, Any], max_batch: int = 0) -> Signature:
    """Validate an ONNX model and fix its input shapes; raises BadMessage(BAD_MODEL)."""
    import onnx
    from onnx import helper

    try:
        model = onnx.load_model_from_string(bytes(model_bytes))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises assorted types for corrupt files
        raise _bad(f"not a valid ONNX model: {str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise _bad("weights stored as external data are not supported; save the model as one file")
    weights = {t.name for t in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in weights]
    if not graph_inputs:
        raise _bad("the model has no inputs")
    unknown = set(input_shapes) - {i.name for i in graph_inputs}
    if unknown:
        raise BadMessage(Status.BAD_INPUT, f"input_shapes names unknown input(s): {', '.join(sorted(unknown))}")

    def dtype_of(value_info) -> str:
        ttype = value_info.type.tensor_type
        if not value_info.type.HasField("tensor_type"):
            raise _bad(f"{value_info.name!r} is not a tensor")
        try:
            name = helper.tensor_dtype_to_np_dtype(ttype.elem_type).name
        except Exception:
            name = "unknown"
        if name not in DTYPE_SIZES:
            raise _bad(f"{value_info.name!r} has unsupported element type {name}")
        return name

    def dims(value_info) -> list:
        """Fixed sizes, and None for a dynamic dimension however the exporter spells it: named
        (dim_param), left empty, or a dim_value of -1 or 0 (Paddle exports write -1)."""
        return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in value_info.type.tensor_type.shape.dim]

    model_limit = None
    inputs = []
    for vi in graph_inputs:
        shape = dims(vi)
        if not shape:
            raise _bad(f"input {vi.name!r} is a scalar; inputs need a batch dimension first")
        batch, rest = shape[0], shape[1:]
        if batch is not None:
            if batch != 1:
                raise _bad(f"input {vi.name!r} has its batch dimension fixed at {batch}; "
                           "export it with a dynamic batch dimension (or 1)")
            model_limit = 1
        fix = input_shapes.get(vi.name)
        if fix is not None:
            if len(fix) != len(rest) or any(d is not None and d != v for d, v in zip(rest, fix)):
                raise BadMessage(Status.BAD_INPUT, f"input {vi.name!r}: shape {list(fix)} does not fit "
                                 f"the model's {['?' if d is None else d for d in rest]} (batch dim excluded)")
            rest = list(fix)
        if any(d is None for d in rest):
            raise _bad(f"input {vi.name!r} has dynamic dimensions {['?' if d is None else d for d in rest]} "
                       f"besides the batch; fix them at upload, e.g. --input-shape {vi.name}=3,224,224")
        inputs.append(TensorSpec(vi.name, dtype_of(vi), tuple(rest)))
    outputs = []
    for vi in model.graph.output:
        shape = dims(vi)[1:]
        outputs.append(TensorSpec(vi.name, dtype_of(vi), tuple(-1 if d is None else d for d in shape)))
    return Signature(tuple(inputs), tuple(outputs), _limit_batch(model_limit, max_batch))


# ----------------------------------------------------------------------------- emulated


@dataclass(frozen=True)
class EmulatedProfile:
    """What an emulated device pretends a model costs."""

    weights_bytes: int
    load_ns: int
    exec_ns: dict[int, int]  # batch size -> exec time
    signature: Signature


_SPEC = c.sequence(describe_tensor, 64)
_PROFILE = c.record(
    {
        "weights_bytes": c.integer(0, 1 << 40),
        "load_ms": lambda v, p: _positive_ms(v, p),
        "exec_ms": c.mapping(c.text(8, r"[0-9]+"), lambda v, p: _positive_ms(v, p), 64),
        "inputs": _SPEC,
        "outputs": _SPEC,
    },
    optional=frozenset({"inputs", "outputs"}),
)
# Emulated requests carry small tensors: the point is timing, not payload.
DEFAULT_EMULATED_IO = {
    "inputs": [{"name": "data", "dtype": "float32", "shape": [16]}],
    "outputs": [{"name": "prob", "dtype": "float32", "shape": [10]}],
}


def _positive_ms(value: Any, path: c.FieldPath) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e7:
        raise _bad(f"{c.render(path)}: expected a positive number of milliseconds, got {value!r}")
    return float(value)


def parse_profile(blob: bytes, max_batch: int = 0) -> EmulatedProfile:
    """Parse a JSON profile such as {"weights_bytes": 102e6, "load_ms": 8.3, "exec_ms": {"1": 2.7}}."""
    try:
        raw = json.loads(bytes(blob).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"profile is not JSON: {exc}") from None
    weights = raw.get("weights_bytes") if isinstance(raw, dict) else None
    if isinstance(weights, float) and math.isfinite(weights) and weights.is_integer():
        raw["weights_bytes"] = int(weights)  # JSON writers print 102e6; anything else is refused below
    try:
        prof = _PROFILE(raw, "profile")
    except BadMessage as exc:
        raise _bad(exc.detail) from None
    exec_ns = {int(k): round(v * 1e6) for k, v in prof["exec_ms"].items()}
    if not exec_ns or 1 not in exec_ns:
        raise _bad("profile.exec_ms needs at least batch size 1")
    if any(b < 1 for b in exec_ns):
        raise _bad("profile.exec_ms batch sizes must be >= 1")

    def specs(key: str) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(d["name"], d["dtype"], tuple(d["shape"]))
                     for d in prof.get(key, DEFAULT_EMULATED_IO[key]))

    limit = max(exec_ns)
    signature = Signature(specs("inputs"), specs("outputs"), _limit_batch(limit, max_batch))
    return EmulatedProfile(prof["weights_bytes"], round(prof["load_ms"] * 1e6), exec_ns, signature)


def signature_of(fmt: str, blob: bytes, input_shapes: dict, max_batch: int) -> Signature:
    if fmt == "profile":
        return parse_profile(blob, max_batch).signature
    return onnx_signature(blob, input_shapes, max_batch)


# ONNX models from this size on are checked in a child process: onnx's checker holds the GIL
# for about 1.4 s per GB (and parsing copies the model twice), which would stall every other
# thread of a daemon: its serving loop, its heartbeats, its lanes. Below it, a child's start-up
# (~0.3 s) would cost more than the check.
ISOLATED_CHECK_BYTES = 32 * 1024 * 1024


def signature_from_file(path: str, fmt: str, input_shapes: dict, max_batch: int) -> Signature:
    """signature_of for a model stored in a file; large ONNX models are checked in a child
    process (`python -m clockwork.common.models`), so that only the calling thread waits, without the GIL."""
    import os
    import subprocess
    import sys

    if fmt != "onnx" or os.path.getsize(path) < ISOLATED_CHECK_BYTES:
        with open(path, "rb") as fh:
            return signature_of(fmt, fh.read(), input_shapes, max_batch)
    child = subprocess.run([sys.executable, "-m", "clockwork.common.models", path, json.dumps(input_shapes), str(max_batch)],
                           capture_output=True, text=True)
    try:
        answer = json.loads(child.stdout)
    except ValueError:
        raise _bad(f"the model check failed (exit status {child.returncode}; out of memory?): "
                   f"{child.stderr.strip()[-300:]}") from None
    if "signature" not in answer:
        raise BadMessage(Status(answer["status"]), answer["detail"])
    return signature_from_header(answer["signature"])


def signature_isolated(fmt: str, blob: bytes, input_shapes: dict, max_batch: int) -> Signature:
    """signature_of; a large ONNX model is written to a temporary file and checked in a child
    process (see signature_from_file), so that only the calling thread waits."""
    if fmt != "onnx" or len(blob) < ISOLATED_CHECK_BYTES:
        return signature_of(fmt, blob, input_shapes, max_batch)
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="clockwork-check-", suffix=".onnx") as fh:
        fh.write(blob)
        fh.flush()
        return signature_from_file(fh.name, fmt, input_shapes, max_batch)


def _check_file(argv: list[str]) -> dict:
    """The child's side: {"signature": header} or {"status", "detail"}."""
    path, input_shapes, max_batch = argv[0], json.loads(argv[1]), int(argv[2])
    try:
        with open(path, "rb") as fh:
            return {"signature": onnx_signature(fh.read(), input_shapes, max_batch).header()}
    except BadMessage as exc:
        return {"status": int(exc.status), "detail": exc.detail}


# ----------------------------------------------------------------------------- requests


def check_inputs(signature: Signature, tensors: tuple[Tensor, ...]) -> int:
    """Check a request's tensors against the model; returns the number of samples."""
    if len(tensors) != len(signature.inputs):
        raise BadMessage(Status.BAD_INPUT, f"expected {len(signature.inputs)} input(s) "
                         f"({', '.join(s.name for s in signature.inputs)}), got {len(tensors)}")
    by_name = {t.name: t for t in tensors}
    samples = None
    for spec in signature.inputs:
        t = by_name.get(spec.name)
        if t is None:
            unexpected = sorted(set(by_name) - {s.name for s in signature.inputs})
            raise BadMessage(Status.BAD_INPUT, f"missing input {spec.name!r}"
                             + (f"; got {', '.join(map(repr, unexpected))}, which the model does not have" if unexpected else "")
                             + f" (the model's inputs: {', '.join(s.name for s in signature.inputs)})")
        if t.dtype != spec.dtype:
            raise BadMessage(Status.BAD_INPUT, f"input {spec.name!r}: dtype {t.dtype}, expected {spec.dtype}")
        if len(t.shape) != len(spec.shape) + 1 or tuple(t.shape[1:]) != spec.shape:
            raise BadMessage(Status.BAD_INPUT, f"input {spec.name!r}: shape {list(t.shape)}, "
                             f"expected [batch, {', '.join(map(str, spec.shape))}]")
        if samples is None:
            samples = t.shape[0]
        elif t.shape[0] != samples:
            raise BadMessage(Status.BAD_INPUT, "inputs disagree on the batch dimension")
    if not samples:
        raise BadMessage(Status.BAD_INPUT, "a request needs at least one sample")
    if samples > signature.max_batch:
        raise BadMessage(Status.BAD_INPUT, f"{samples} samples exceed the model's max batch {signature.max_batch}")
    return samples


def pages_for(weights_bytes: int, page_bytes: int) -> int:
    return max(1, math.ceil(weights_bytes / page_bytes))


def signature_from_header(data: dict) -> Signature:
    """Inverse of Signature.header() (for the registry's stored copy)."""

    def specs(items) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in items)

    return Signature(specs(data["inputs"]), specs(data["outputs"]), int(data["max_batch"]))


if __name__ == "__main__":
    import sys

    print(json.dumps(_check_file(sys.argv[1:])))
