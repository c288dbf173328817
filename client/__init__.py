"""Clockwork client library: `Client` (blocking) and `AsyncClient` (asyncio).

    from clockwork.client import Client
    with Client() as cw:                      # $CLOCKWORK_ENDPOINT or tcp://127.0.0.1:5555
        cw.upload("resnet50.onnx", "resnet50")
        result = cw.infer("resnet50", batch, slo_ms=50)   # batch: np.ndarray, batch dim first

See `Client` for the workflow and defaults, `client.protocol` for the I/O-free builders and
parsers (used by the load generator), and `client.errors` for the typed errors.
"""

from clockwork.client.aio import AsyncClient
from clockwork.client.errors import (
    CapacityError,
    ClientClosed,
    ClockworkError,
    DeadlineExceeded,
    RequestError,
    ServerError,
    Unreachable,
    error_for,
)
from clockwork.client.protocol import InferResult
from clockwork.client.sync import Client

__all__ = [
    "Client",
    "AsyncClient",
    "InferResult",
    "ClockworkError",
    "RequestError",
    "CapacityError",
    "ServerError",
    "DeadlineExceeded",
    "ClientClosed",
    "Unreachable",
    "error_for",
]
