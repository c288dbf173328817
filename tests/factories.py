"""Factories for scheduling-core tests: build state with real messages, not mocks."""

from __future__ import annotations

import numpy as np

from clockwork.common import schema
from clockwork.common.config import SchedulerConfig
from clockwork.common.models import Signature, TensorSpec
from clockwork.common.status import Status
from clockwork.common.tensors import Tensor
from clockwork.controller.core import Core
from clockwork.controller.policy import ClockworkPolicy
from clockwork.controller.effects import PrepareOn, ToClient, ToWorker, UploadFinished

MS = 1_000_000
MIB = 1024 * 1024
SIG = Signature((TensorSpec("x", "float32", (4,)),), (TensorSpec("y", "float32", (2,)),), 16)
EXEC_NS = {1: 2 * MS, 2: 3 * MS, 4: 4 * MS, 8: 6 * MS, 16: 10 * MS}
LOAD_NS = 8 * MS
CLIENT = b"client-1"


def make_core(**overrides) -> Core:
    """A core with the default configuration, except a 1 ms reply allowance: the tests' timings
    (an SLO that fits a batch of 2 but not 4, and so on) are worked out with it."""
    return Core(SchedulerConfig(**{"reply_ns": MS, **overrides}), ClockworkPolicy())


def hello(core: Core, name: str = "w1", devices: int = 1, memory_bytes: int = 1024 * MIB, now: int = 0,
          kind: str = "emulated") -> list:
    msg = schema.Hello(worker=name, runtime="emulated", formats=("profile", "onnx"), devices=tuple(
        {"device_id": i, "kind": kind, "memory_bytes": memory_bytes, "page_bytes": 16 * MIB} for i in range(devices)))
    return core.on_hello(name, msg, now)


def add_model(core: Core, name: str, workers=("w1",), weights_bytes: int = 100 * MIB, now: int = 0,
              exec_ns: dict | None = None, load_ns: int = LOAD_NS) -> list:
    """Register a model and answer every PREPARE as the named workers would."""
    effects = core.on_upload(name, "profile", SIG, CLIENT, 999, now)
    for effect in list(effects):
        if isinstance(effect, PrepareOn) and effect.worker in workers:
            effects += core.on_prepared(effect.worker, schema.Prepared(
                model_id=name, status=Status.OK, weights_bytes=weights_bytes, load_ns=load_ns,
                exec_ns=exec_ns or EXEC_NS, max_batch=16), now)
    return effects


def infer(core: Core, request_id: int, model: str = "m", slo_ms: float = 100, now: int = 0, samples: int = 1,
          priority: int = 0, client: bytes = CLIENT) -> list:
    x = np.full((samples, 4), request_id, dtype=np.float32)
    msg = schema.Infer(model=model, slo_ns=int(slo_ms * MS), priority=priority, tensors=(Tensor.from_array("x", x),))
    return core.on_request(client, request_id, msg, now)


def sent(effects: list, kind: type) -> list:
    """The messages of one type sent to workers."""
    return [e for e in effects if isinstance(e, ToWorker) and isinstance(e.body, kind)]


def replies(effects: list) -> list:
    return [e for e in effects if isinstance(e, ToClient)]


def uploads(effects: list) -> list:
    return [e for e in effects if isinstance(e, UploadFinished)]


def result_for(core: Core, effect: ToWorker, now: int, status: Status = Status.OK, duration_ns: int | None = None,
               disturbed: bool = False) -> list:
    """Answer an action the way a worker would: exec outputs echo the first column."""
    body = effect.body
    kind = body.ACTION
    duration = duration_ns if duration_ns is not None else getattr(body, "expected_ns", 0)
    tensors = ()
    if kind is schema.ActionKind.EXEC and status is Status.OK:
        rows = np.concatenate([t.array() for t in body.tensors])[:, :2].copy()
        tensors = (Tensor.from_array("y", rows),)
    msg = schema.Result(action=kind, status=status, device_id=body.device_id, model_id=body.model_id,
                        begin_ns=now - duration, end_ns=now, duration_ns=duration,
                        batch_size=getattr(body, "batch_size", 0), disturbed=disturbed, tensors=tensors)
    return core.on_result(effect.worker, effect.msg_id, msg, now)
