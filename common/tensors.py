"""Tensors on the wire: a small descriptor in the header, the raw bytes in a frame of their own.

Bytes are never copied on the way through: a `Tensor` keeps whatever buffer it was given (a
memoryview of a ZeroMQ frame on receipt), and `array()` is a zero-copy numpy view of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.checks import BadMessage, integer, one_of, record, sequence, text
from common.status import Status

# The dtype allow-list: names as numpy spells them, item sizes in bytes.
DTYPE_SIZES: dict[str, int] = {
    "float32": 4,
    "float16": 2,
    "float64": 8,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "int32": 4,
    "int64": 8,
    "bool": 1,
}
MAX_DIMS = 8
MAX_DIM = 1 << 31
TENSOR_NAME = text(256)

describe_tensor = record(
    {
        "name": TENSOR_NAME,
        "dtype": one_of(*DTYPE_SIZES),
        "shape": sequence(integer(0, MAX_DIM), MAX_DIMS),
    }
)


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # one of DTYPE_SIZES
    shape: tuple[int, ...]
    data: Any  # bytes-like (bytes, memoryview, ndarray), C-contiguous, len == nbytes

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]

    def array(self) -> np.ndarray:
        """A read-only numpy view of the bytes (no copy)."""
        return np.frombuffer(self.data, dtype=self.dtype).reshape(self.shape)

    @classmethod
    def from_array(cls, name: str, array: np.ndarray) -> "Tensor":
        array = np.ascontiguousarray(array)
        dtype = array.dtype.name
        if dtype not in DTYPE_SIZES:
            raise BadMessage(Status.BAD_INPUT, f"tensor {name!r}: dtype {dtype} is not supported")
        return cls(name, dtype, tuple(int(d) for d in array.shape), array.reshape(-1).view(np.uint8).data)

    def header(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def attach(descriptors: tuple[dict, ...], frames: list, path: str) -> tuple[Tensor, ...]:
    """Pair validated descriptors with their data frames, checking every byte length."""
    tensors = []
    for i, (desc, frame) in enumerate(zip(descriptors, frames)):
        view = memoryview(frame)
        tensor = Tensor(desc["name"], desc["dtype"], tuple(desc["shape"]), view)
        if view.nbytes != tensor.nbytes:
            raise BadMessage(
                Status.BAD_MESSAGE,
                f"{path}[{i}] ({desc['name']!r}): {view.nbytes} bytes, but shape "
                f"{list(tensor.shape)} of {tensor.dtype} needs {tensor.nbytes}",
            )
        tensors.append(tensor)
    return tuple(tensors)
