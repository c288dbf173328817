"""Tensors on the wire: a small descriptor in the header, the raw bytes in a frame of their own.

Bytes are never copied on the way through: a `Tensor` keeps whatever buffer it was given (a
memoryview of a ZeroMQ frame on receipt), and `array()` is a zero-copy numpy view of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np

from clockwork.common.checks import BadMessage, integer, one_of, record, sequence, text, wire_type
from clockwork.common.frozen import one_step_init
from clockwork.common.status import Status

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
# The allowed dtypes by numpy dtype, in the wire's byte order (little-endian, as every host
# this runs on): numpy works `dtype.name` out in Python each time it is read (~2.7 us, a third
# of wrapping an output as a Tensor).
DTYPE_NAMES: dict[np.dtype, str] = {np.dtype(name): name for name in DTYPE_SIZES}
MAX_DIMS = 8
MAX_DIM = 1 << 31
MAX_NAME = 256
MAX_TENSORS = 64  # per message
TENSOR_NAME = text(MAX_NAME)

DESCRIPTOR = {
    "name": TENSOR_NAME,
    "dtype": one_of(*DTYPE_SIZES),
    "shape": sequence(integer(0, MAX_DIM), MAX_DIMS),
}
describe_tensor = record(DESCRIPTOR)
# The same descriptors as msgspec reads them (the codec's fast path, common/codec.py).
TensorSpec = msgspec.defstruct("TensorSpec", [(name, wire_type(check)) for name, check in DESCRIPTOR.items()],
                               frozen=True)
SPECS_WIRE = Annotated[tuple[TensorSpec, ...], msgspec.Meta(max_length=MAX_TENSORS)]


@one_step_init  # one per output row of every reply: built in one step (common/frozen.py)
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
        dtype = DTYPE_NAMES.get(array.dtype)
        if dtype is None:
            little = array.dtype.newbyteorder("<")  # the wire's byte order
            dtype = DTYPE_NAMES.get(little)
            if dtype is None:
                raise BadMessage(Status.BAD_INPUT, f"tensor {name!r}: dtype {array.dtype.name} is not supported")
            array = array.astype(little)
        return cls(name, dtype, array.shape, array.reshape(-1).view(np.uint8).data)  # shape: a tuple of ints

    def header(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def read_specs(value: Any, field: str = "tensors") -> list[tuple[str, str, tuple[int, ...]]]:
    """A header's tensor descriptors, validated by `describe_tensor`'s rules, as (name, dtype,
    shape) tuples. The rules are unrolled for speed (every tensor of every message passes
    here); on any doubt the generic check runs and says exactly what is wrong."""
    if not isinstance(value, list):
        raise BadMessage(Status.BAD_MESSAGE, f"{field}: expected a list")
    if len(value) > MAX_TENSORS:
        raise BadMessage(Status.BAD_MESSAGE, f"{field}: more than {MAX_TENSORS}")
    specs = []
    for i, desc in enumerate(value):
        if type(desc) is dict:
            name, dtype, shape = desc.get("name"), desc.get("dtype"), desc.get("shape")
            if (type(name) is str and len(name) <= MAX_NAME and type(dtype) is str and dtype in DTYPE_SIZES
                    and type(shape) is list and len(shape) <= MAX_DIMS
                    and all(type(d) is int and 0 <= d <= MAX_DIM for d in shape)):
                specs.append((name, dtype, tuple(shape)))
                continue
        describe_tensor(desc, (field, i))  # raises, naming the field
        raise BadMessage(Status.BAD_MESSAGE, f"{field}[{i}]: not a tensor descriptor")
    return specs


def attach(specs: list[tuple[str, str, tuple[int, ...]]], frames: list, path: str) -> tuple[Tensor, ...]:
    """Pair validated specs (`read_specs`) with their data frames, checking every byte length."""
    tensors = []
    for i, ((name, dtype, shape), frame) in enumerate(zip(specs, frames)):
        view = memoryview(frame)
        needs = math.prod(shape) * DTYPE_SIZES[dtype]
        if view.nbytes != needs:
            raise BadMessage(
                Status.BAD_MESSAGE,
                f"{path}[{i}] ({name!r}): {view.nbytes} bytes, but shape {list(shape)} of {dtype} needs {needs}",
            )
        tensors.append(Tensor(name, dtype, shape, view))
    return tuple(tensors)
