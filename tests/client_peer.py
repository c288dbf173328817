"""A scripted controller for client tests: a real ZeroMQ ROUTER on loopback, in a background
thread, answering with real encoded REPLY / INFER_REPLY / ERROR messages.

`FakeController.handle(envelope)` decides what to answer; the model name of an INFER picks a
behaviour, so one peer serves every test:

    "silent"     never answers
    "late"       answers only when the next request arrives (the stale reply goes out first)
    "slow"       answers after 0.2 s
    "once"       answers after 0.2 s, and absorbs resends of a request it has seen (as the
                 controller does: it answers each request once)
    "overload"   INFER_REPLY(WOULD_MISS_DEADLINE)
    "anon-error" ERROR(BAD_MESSAGE) with parent_id 0
    "garbage"    an undecodable reply that still names its request
    "wrongtype"  an OK REPLY instead of an INFER_REPLY
    anything else: the registered model's echo, each output = 2 * input
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from dataclasses import dataclass, field

import msgpack
import numpy as np
import zmq

from clockwork.common import codec, schema
from clockwork.common.schema import Envelope, Message
from clockwork.common.status import Status
from clockwork.common.tensors import Tensor

DEFAULT_INPUTS = [{"name": "data", "dtype": "float32", "shape": [4]}]


@dataclass
class Send:
    """One message for the peer to send."""

    body: Message | None = None
    parent_id: int | None = None  # default: the request's msg_id
    frames: list | None = None  # raw frames instead of an encoded body
    delay_s: float = 0.0


def model_info(name: str, inputs: list[dict] | None = None) -> dict:
    inputs = inputs or DEFAULT_INPUTS
    return {
        "name": name, "format": "onnx", "max_batch": 16, "inputs": inputs,
        "outputs": [{"name": f"{i['name']}_out", "dtype": i["dtype"], "shape": i["shape"]} for i in inputs],
        "size_bytes": 1234, "sha256": "ab" * 32, "created_unix_s": 1.7e9, "prepared_on": ["w0"],
        "load_ms": 8.25, "exec_ms": {"1": 2.5, "16": 20.0},
    }


class FakeController:
    """Answers like the controller would, from a dict of registered models."""

    PAGE = 2  # models per LIST page: fewer than the controller's, so that clients page here too

    def __init__(self):
        self.models: dict[str, dict] = {"echo": model_info("echo"),
                                        "pair": model_info("pair", [{"name": "a", "dtype": "float32", "shape": [2]},
                                                                    {"name": "b", "dtype": "int64", "shape": [2]}])}
        self.stashed: list[Send] = []
        self.seen: set[int] = set()  # the msg_ids of "once" INFERs

    def handle(self, env: Envelope) -> list[Send]:
        out, self.stashed = self.stashed, []
        body = env.body
        handler = getattr(self, f"on_{body.TYPE.value}", None)
        if handler is None:
            return out + [Send(schema.Error(status=Status.UNKNOWN_TYPE, detail=body.TYPE.value))]
        return out + handler(env)

    def on_upload(self, env: Envelope) -> list[Send]:
        up: schema.Upload = env.body
        if up.name == "broken":
            return [Send(reply(Status.BAD_MODEL, "input 'x' has dynamic dimensions ['?', 224] besides the batch; "
                                                 "fix them at upload, e.g. --input-shape x=3,224,224"))]
        if up.name in self.models and not up.replace:
            return [Send(reply(Status.MODEL_EXISTS, f"model {up.name!r} exists"))]
        inputs = [{"name": k, "dtype": "float32", "shape": v} for k, v in up.input_shapes.items()] or None
        info = model_info(up.name, inputs)
        info["format"], info["size_bytes"] = up.format, len(up.blob)
        self.models[up.name] = info
        return [Send(reply(body={"model": info}))]

    def on_remove(self, env: Envelope) -> list[Send]:
        if self.models.pop(env.body.name, None) is None:
            return [Send(reply(Status.MODEL_NOT_FOUND, f"no model named {env.body.name!r}"))]
        return [Send(reply())]

    def on_list(self, env: Envelope) -> list[Send]:
        want: schema.ListModels = env.body
        matching = sorted(n for n in self.models if n.startswith(want.prefix))
        names = [n for n in matching if n > want.after]
        shown = names[:min(want.limit or self.PAGE, self.PAGE)]
        after = shown[-1] if len(names) > len(shown) else ""
        return [Send(reply(body={"models": [self.models[n] for n in shown], "total": len(matching), "next": after}))]

    def on_model(self, env: Envelope) -> list[Send]:
        info = self.models.get(env.body.name)
        if info is None:
            return [Send(reply(Status.MODEL_NOT_FOUND, f"no model named {env.body.name!r}"))]
        return [Send(reply(body=info))]

    def on_status(self, env: Envelope) -> list[Send]:
        return [Send(reply(body={
            "workers": [{"name": "w0", "runtime": "emulated", "alive": True, "devices": [
                {"device_id": 0, "kind": "emulated-v100", "memory_bytes": 32 << 30, "used_bytes": 1 << 30,
                 "loaded": ["echo"], "loaded_count": 1, "loading": [], "loading_count": 0, "busy_until_ms": 1.5},
                {"device_id": 1, "kind": "emulated-v100", "memory_bytes": 32 << 30, "used_bytes": 0, "loaded": [],
                 "loaded_count": 0, "loading": [], "loading_count": 0},
            ]}],
            "models": [{"name": "echo", "queued": 3, "in_flight": 1, "resident_on": ["w0:0"], "replicas": 1}],
            "models_total": len(self.models),
            "counters": {"requests": 42, "rejected": 2, "goodput_per_s": 12.5},
            "scheduler": {"admission_headroom": 0.07, "dispatch_ms": 1.5},
        }))]

    def on_cancel(self, env: Envelope) -> list[Send]:
        return [Send(reply(body={"cancelled": True}))]

    def on_infer(self, env: Envelope) -> list[Send]:
        model = env.body.model
        if model == "silent":
            return []
        if model == "late":
            self.stashed.append(Send(infer_reply({"stale": np.full((1, 1), -1.0, np.float32)}), env.msg_id))
            return []
        if model == "overload":
            return [Send(schema.InferReply(status=Status.WOULD_MISS_DEADLINE, detail="needs 12 ms, 5 ms left"))]
        if model == "anon-error":
            return [Send(schema.Error(status=Status.BAD_MESSAGE, detail="cannot read header"), parent_id=0)]
        if model == "garbage":
            header = msgpack.packb({"type": "infer_reply", "msg_id": 7, "parent_id": env.msg_id, "status": "x"})
            return [Send(frames=[header])]
        if model == "wrongtype":
            return [Send(reply())]
        if model == "once":
            if env.msg_id in self.seen:
                return []
            self.seen.add(env.msg_id)
        delay = 0.2 if model in ("slow", "once") else 0.0
        if model not in ("slow", "once") and model not in self.models:
            return [Send(schema.InferReply(status=Status.MODEL_NOT_FOUND, detail=f"no model named {model!r}"))]
        outputs = {f"{t.name}_out": t.array() * 2 for t in env.body.tensors}
        samples = env.body.tensors[0].shape[0] if env.body.tensors else 0
        return [Send(infer_reply(outputs, batch_size=samples), delay_s=delay)]


def reply(status: Status = Status.OK, detail: str = "", body: dict | None = None) -> schema.Reply:
    return schema.Reply(status=status, detail=detail, body=body or {})


def infer_reply(outputs: dict[str, np.ndarray], batch_size: int = 1) -> schema.InferReply:
    return schema.InferReply(status=Status.OK, queue_ns=400_000, exec_ns=2_500_000, total_ns=3_250_000,
                             batch_size=batch_size, cold_start=True, worker="w0",
                             tensors=tuple(Tensor.from_array(k, v) for k, v in outputs.items()))


@dataclass
class ScriptedPeer:
    """The ROUTER thread. `received` holds every decoded request, in order."""

    controller: FakeController = field(default_factory=FakeController)
    received: list = field(default_factory=list)

    def __post_init__(self):
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stop = threading.Event()
        self._due: list = []  # heap of (due monotonic s, seq, identity, frames)
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._run, name="client-peer", daemon=True)

    def __enter__(self) -> "ScriptedPeer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()
        self._ctx.term()

    def requests(self, kind: type) -> list[Envelope]:
        return [e for e in list(self.received) if isinstance(e.body, kind)]

    def _run(self) -> None:
        while not self._stop.is_set():
            wait_ms = 50 if not self._due else max(0, min(50, int((self._due[0][0] - time.monotonic()) * 1000)))
            if self._sock.poll(wait_ms, zmq.POLLIN):
                identity, *frames = self._sock.recv_multipart()
                self._on_request(identity, frames)
            while self._due and self._due[0][0] <= time.monotonic():
                _, _, identity, frames = heapq.heappop(self._due)
                self._sock.send_multipart([identity, *frames])

    def _on_request(self, identity: bytes, frames: list) -> None:
        env = codec.decode(frames)  # the client under test must only send valid messages
        self.received.append(env)
        for send in self.controller.handle(env):
            parent = env.msg_id if send.parent_id is None else send.parent_id
            out = send.frames or codec.encode(send.body, next(self._seq) + 1, parent, time.monotonic_ns())
            heapq.heappush(self._due, (time.monotonic() + send.delay_s, next(self._seq), identity, out))
