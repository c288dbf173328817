"""NNEF models at upload: converted to ONNX on the uploading side, then registered like any ONNX.

An NNEF model is a folder holding `graph.nnef` and its `.dat` weight files, or that folder as a
.tgz. Khronos's nnef-tools (`pip install '.[nnef]'`) converts it to ONNX in a child process
(`python -m nnef_tools.convert`), so the daemons never need NNEF code and serve the result on
every runtime. A graph that cannot be converted (an operation the NNEF parser does not know, or
one that has no ONNX counterpart) is refused with BAD_MODEL naming the operation, before anything
is sent.

NNEF graphs have static shapes, so a converted model keeps the batch size it was written with
(usually 1): it is served with that as its largest batch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from clockwork.client.errors import error_for
from clockwork.common.status import Status

FORMAT = "nnef"  # the upload format a client accepts; what it registers is "onnx"


def looks_like_nnef(model: Any) -> bool:
    """A folder with a graph.nnef, or a path ending in .nnef or .nnef.tgz."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return False
    path = os.fspath(model)
    return (os.path.isdir(path) and os.path.isfile(os.path.join(path, "graph.nnef"))) \
        or path.lower().endswith((".nnef", ".nnef.tgz"))


def default_name(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    for suffix in (".nnef.tgz", ".tgz", ".nnef"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def to_onnx(path: str | os.PathLike, timeout_s: float = 600.0) -> bytes:
    """The ONNX bytes of the NNEF model at `path` (folder or .tgz); RequestError(BAD_MODEL) with
    the converter's reason when it cannot be converted."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise error_for(Status.BAD_MODEL, f"no NNEF model at {path!r}")
    with tempfile.TemporaryDirectory(prefix="clockwork-nnef-") as scratch:
        out = Path(scratch) / "model.onnx"
        cmd = [sys.executable, "-m", "nnef_tools.convert", "--input-format", "nnef", "--output-format", "onnx",
               "--input-model", path, "--output-model", str(out), "--keep-io-names"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise error_for(Status.BAD_MODEL, f"converting the NNEF model took over {timeout_s:g} s") from None
        if proc.returncode or not out.exists():
            raise error_for(Status.BAD_MODEL, f"the NNEF model cannot be converted to ONNX: {reason(proc)}")
        return out.read_bytes()


def reason(proc: subprocess.CompletedProcess) -> str:
    """The converter's own explanation: the exception line and what follows it, or the last lines."""
    text = (proc.stderr or "") + (proc.stdout or "")
    if "No module named nnef_tools" in text or "No module named 'nnef_tools'" in text:
        return "nnef-tools is not installed (pip install '.[nnef]')"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for i in range(len(lines) - 1, -1, -1):
        head, sep, _ = lines[i].partition(": ")
        if sep and head.split(".")[-1].endswith(("Error", "Exception")):
            message = lines[i][len(head) + 2:]
            return " ".join([message, *lines[i + 1:]])[:1000]
    return " ".join(lines[-3:])[:1000] or f"nnef_tools exited with status {proc.returncode}"
