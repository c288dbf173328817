"""`clockwork-gateway`: the KServe v2 / Open Inference Protocol over HTTP, for the clients people
already have (Triton's `tritonclient`, KServe's, curl), translated into the Clockwork client
protocol.

    clockwork-gateway --listen 127.0.0.1:8000 --controller tcp://127.0.0.1:5555 \\
                      --connections 4 --default-slo-ms 1000

    import tritonclient.http as httpclient
    triton = httpclient.InferenceServerClient("127.0.0.1:8000")
    x = httpclient.InferInput("x", [1, 64], "FP32")
    x.set_data_from_numpy(np.zeros((1, 64), np.float32))
    y = triton.infer("mlp", [x], timeout=50_000).as_numpy("y")    # timeout in microseconds = the SLO

The gateway is a shell: `client.v2` decides what requests mean and how answers look; this module
moves bytes between aiohttp and a pool of `AsyncClient`s (one DEALER each, used round-robin). It
holds no scheduling logic: every request goes to the controller with its deadline and priority,
and the controller's answer, whatever it is, goes back to the caller at once. docs/gateway.md
lists the endpoints, the status table and the flags.

Rules:
- Every answer is bounded in time: infer by its SLO plus the client's grace, admin calls by
  --admin-timeout-s, reading a request body by --body-timeout-s.
- No input crashes the gateway: malformed JSON, wrong lengths and oversize bodies are answered
  400/408/413 with a reason in the v2 error body; our own bugs answer 500 and are logged.
- A caller that disconnects cancels its request (aiohttp handler cancellation), which sends a
  CANCEL so the controller does not spend a device on an answer nobody reads.
- When the gateway's own event loop falls behind (its CPU is the bottleneck), infers are refused
  429 at the door, before their bodies are parsed (client/door.py), so that the rest are served
  in time; the controller is given what is left of each request's SLO, not all of it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

try:
    from aiohttp import web
    from aiohttp.http_exceptions import HttpProcessingError
except ImportError as exc:  # the daemons do not need it: it comes with the gateway extra
    raise SystemExit(f"clockwork-gateway needs the gateway extra: pip install 'clockwork-serving[gateway]' "
                     f"({exc})") from None

from clockwork.common import cpu_latency, logsetup, schema, version
from clockwork.common.affinity import LaneCores
from clockwork.common.checks import BadMessage
from clockwork.common.metrics import LATENCY_BUCKETS_S, UNKNOWN, BoundedLabels, ChildCache, new_registry, outcome
from clockwork.common.status import Status
from clockwork.client import v2
from clockwork.client.aio import AsyncClient
from clockwork.client.door import Door
from clockwork.client.errors import CapacityError, ClockworkError, DeadlineExceeded
from clockwork.client.protocol import DEFAULT_ENDPOINT, InferResult, default_endpoint

log = structlog.get_logger("clockwork.gateway")
MiB = 1 << 20
GATEWAY = web.AppKey("gateway", object)  # the app's Gateway, for embedders and tests
# Readiness answers within this: Kubernetes' default probe timeout is 1 s, and a probe that times
# out says nothing about why.
READY_TIMEOUT_S = 0.8


@dataclass(frozen=True)
class GatewayConfig:
    """Every knob of the gateway, with why its default is what it is."""

    host: str = "127.0.0.1"  # loopback: exposing it is a deliberate --listen 0.0.0.0:8000
    port: int = 8000  # Triton's HTTP port, where v2 tools look first
    # gRPC (client/grpc_gateway.py) is served only when asked (--grpc-listen; Triton uses 8001),
    # so that a second port is opened deliberately. 0: off.
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 0
    controller: str = DEFAULT_ENDPOINT
    # One AsyncClient multiplexes any number of requests; a few spread the (de)serialization
    # over several ZeroMQ connections and I/O threads' queues without any scheduling here.
    connections: int = 4
    # A request without parameters.timeout gets this SLO; 1 s is generous for an interactive
    # model and still bounds how long a caller waits.
    default_slo_ms: float = 1000.0
    # Bodies above this are refused with 413 before they are buffered whole.
    max_body_bytes: int = 64 * MiB
    # A caller that announces more bytes than it sends gets 408 instead of holding a handler.
    body_timeout_s: float = 30.0
    # LIST pages, model look-ups and STATUS are answered from the controller's memory and
    # registry in milliseconds: past this the controller is unreachable and metadata calls 503.
    admin_timeout_s: float = 5.0
    # repository load waits this long for a worker to prepare the model before answering 503.
    load_wait_s: float = 30.0
    # Retry-After on 429/503: admission decisions change within milliseconds, so 1 s (the
    # header's resolution) is the shortest honest hint.
    retry_after_s: int = 1
    # On SIGTERM, requests in flight get this long to be answered before the sockets close.
    shutdown_timeout_s: float = 5.0
    # The door (client/door.py): once the event loop has run more than shed_lag_ms late for a
    # whole shed_interval_ms with shed_min_requests infers read, while the lag hurts (an infer
    # answered near its deadline or one read past the ceiling, lately), infers read that late
    # are answered 429 unread until an interval passes with none late. 10 ms, a fifth of a 50 ms
    # SLO, leaves the rest for the controller, the device and the reply; with CoDel's 5 ms, on
    # a host busy with other work, a gateway descheduled for a few ms refused requests at a
    # third of its capacity (44 of 1,489 at 300/s) that would have made their SLOs. The
    # interval is CoDel's 100 ms / 5: at 3x its capacity the loop's lag grows by 2 ms per ms
    # until shedding starts, and with 100 ms the requests read meanwhile were answered after
    # their deadlines (measured: a run of 504s at every onset). 8 requests a window: a few
    # requests slowed by one long JSON body are not a standing queue. 0 ms: never shed.
    shed_lag_ms: float = 10.0
    shed_interval_ms: float = 20.0
    shed_min_requests: int = 8
    # An infer read more than this late is refused at once, before the queue has stood for an
    # interval, once shed_min_requests reads in a row came late: from idle to 3x capacity the lag
    # grows 2 ms per ms, and those read in the first 20-30 ms were answered past a 50 ms SLO
    # (client/door.py). Like shed_lag_ms, sized for SLOs of tens of ms. 0: no ceiling.
    shed_ceiling_ms: float = 15.0
    # Keep off the CPU cores the EXEC lanes of workers on this host hold (the controller's STATUS
    # lists them; common/affinity.py), looked at every lane_cores_check_s: a gateway parsing
    # JSON on a lane's core makes its EXECs slower than the controller predicted.
    avoid_lane_cores: bool = True
    lane_cores_check_s: float = 5.0
    # ... but only where at least this many cores are left to it. On a 2-core host with one CPU
    # lane, kept to the other core with the controller and the worker's loop, it refused 4-24% of
    # the JSON infers at 300/s, where the plain HTTP server (on both cores) answered all: sharing
    # the lane's core, 0-8%, better in five pairs of runs of five (docs/benchmarks.md).
    min_cores_left: int = 2
    # Hold a CPU latency request while serving, as the controller and the worker do
    # (common/cpu_latency.py): idle cores poll, so a request arriving after a lull finds one awake.
    keep_cores_awake: bool = True
    # Gateway processes sharing the port: one parses JSON on one core, so a core's worth of
    # requests needs another process. 1 until measured otherwise.
    processes: int = 1
    # Which of `--processes N` this one is (client/gateway_processes.py): it then binds its port
    # with SO_REUSEPORT and says so in its metrics and logs. None: the only process.
    process_index: int | None = None


# ----------------------------------------------------------------------------- the pool


class ClientPool:
    """`size` AsyncClients to one controller, handed out round-robin. Create and close it on
    the event loop that uses it."""

    def __init__(self, endpoint: str, size: int, admin_timeout_s: float):
        self.clients = [AsyncClient(endpoint, timeout_s=admin_timeout_s, report_reply_hops=False) for _ in range(size)]
        self._turn = itertools.cycle(self.clients)

    def next(self) -> AsyncClient:
        return next(self._turn)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients))


# ----------------------------------------------------------------------------- the application


class GatewayMetrics:
    """The gateway's own Prometheus metrics, served at GET /metrics on its HTTP port:

        clockwork_gateway_requests_total{model,protocol,outcome,reason}  every infer answered
        clockwork_gateway_request_duration_seconds{model,protocol}       OK ones, receipt to answer
        clockwork_gateway_requests_in_flight{protocol}                   infers being handled
        clockwork_gateway_shed_total{protocol}                           of the 429s, the door's (client/door.py)
        clockwork_gateway_process_info{process,pid}                       which process answered
        process_*                                                        CPU, memory, descriptors

    With --processes N each process counts its own requests: a scrape of the shared port reads
    one process (the one the kernel gave the connection to), which the info series names.

    `model` is bounded like the controller's (the first 20 names seen, then _other), and a name
    the controller does not know counts as _unknown: callers choose names, so they are unbounded."""

    def __init__(self, max_models: int = 20, process_index: int | None = None):
        self.registry = new_registry()
        r = self.registry
        Gauge("clockwork_gateway_process_info", "This gateway process: its index among --processes and its pid",
              ["process", "pid"], registry=r).labels(str(process_index or 0), str(os.getpid())).set(1)
        self.requests = Counter("clockwork_gateway_requests", "Infer requests answered by the gateway",
                                ["model", "protocol", "outcome", "reason"], registry=r)
        self.duration = Histogram("clockwork_gateway_request_duration_seconds",
                                  "OK infer requests, gateway receipt to answer", ["model", "protocol"],
                                  buckets=LATENCY_BUCKETS_S, registry=r)
        self.shed = Counter("clockwork_gateway_shed", "Infer requests refused at the gateway's door (429): "
                            "its event loop stood behind", ["protocol"], registry=r)
        self.in_flight = Gauge("clockwork_gateway_requests_in_flight", "Infer requests being handled",
                               ["protocol"], registry=r)
        self._models = BoundedLabels(max_models)
        self._child = ChildCache()  # labels() checks and locks on every call: once per series here

    def answered(self, model: str, protocol: str, status: Status, seconds: float) -> None:
        label = UNKNOWN if status is Status.MODEL_NOT_FOUND else self._models(model)
        self._child(self.requests, label, protocol, outcome(status), status.name).inc()
        if status is Status.OK:
            self._child(self.duration, label, protocol).observe(seconds)


class Gateway:
    """The v2 endpoints, each a thin handler over `client.v2` and the pool."""

    def __init__(self, config: GatewayConfig):
        self.config = config
        self.stats = v2.StatsBook()
        self.metrics = GatewayMetrics(process_index=config.process_index)
        self.pool: ClientPool | None = None
        self.server_metadata = v2.server_metadata(version())
        self.door = Door(int(config.shed_lag_ms * 1e6), int(config.shed_interval_ms * 1e6), config.shed_min_requests,
                         int(config.shed_ceiling_ms * 1e6))
        self._lane_watch: asyncio.Task | None = None

    # -- lifecycle (aiohttp signals)

    async def on_startup(self, _app: web.Application) -> None:
        self.pool = ClientPool(self.config.controller, self.config.connections, self.config.admin_timeout_s)
        self.door.start()
        if self.config.avoid_lane_cores:
            self._lane_watch = asyncio.get_running_loop().create_task(self._keep_off_lanes())

    async def on_cleanup(self, _app: web.Application) -> None:
        if self._lane_watch is not None:
            self._lane_watch.cancel()
            await asyncio.gather(self._lane_watch, return_exceptions=True)
        await self.door.stop()
        if self.pool is not None:
            await self.pool.close()

    def routes(self) -> list[web.RouteDef]:
        model = "/v2/models/{model}"
        versioned = "/v2/models/{model}/versions/{version}"
        routes = [
            web.get("/v2/health/live", self.live),
            web.get("/metrics", self.prometheus),
            web.get("/v2/health/ready", self.ready),
            web.get("/v2", self.metadata),
            web.get("/v2/models/stats", self.all_stats),  # before {model}: "stats" is not a model
            web.post("/v2/repository/index", self.index),
            web.post("/v2/repository/models/{model}/load", self.load),
            web.post("/v2/repository/models/{model}/unload", self.unload),
        ]
        for base in (model, versioned):
            routes += [
                web.get(base, self.model_metadata),
                web.get(base + "/ready", self.model_ready),
                web.get(base + "/config", self.model_config),
                web.get(base + "/stats", self.model_stats),
                web.post(base + "/infer", self.infer),
            ]
        return routes

    # -- controller calls

    async def _admin(self, call: Callable[[AsyncClient], Awaitable[Any]]) -> Any:
        try:
            return await call(self.pool.next())
        except DeadlineExceeded as exc:
            raise v2.V2Error(503, Status.UNAVAILABLE, f"the controller at {self.config.controller} did not "
                             f"answer: {exc.detail}", self.config.retry_after_s) from None
        except ClockworkError as exc:
            raise v2.error_from(exc, self.config.retry_after_s) from None

    async def _keep_off_lanes(self) -> None:
        """Follow the cores the controller lists as its host's EXEC lanes (common/affinity.py)."""
        lanes = LaneCores(min_left=self.config.min_cores_left)
        while True:
            try:
                cores = lanes.follow(await self._admin(lambda c: c.status(models_limit=0)))
            except v2.V2Error:
                cores = None  # the controller is away: look again later
            if cores is not None and cores & lanes.held():
                log.info("sharing the EXEC lanes' cores: keeping off them would leave fewer than "
                         f"{self.config.min_cores_left}", cores=sorted(cores), lanes=sorted(lanes.held()))
            elif cores is not None:
                log.info("running on cores the EXEC lanes on this host leave free", cores=sorted(cores),
                         lanes=sorted(lanes.held()))
            await asyncio.sleep(self.config.lane_cores_check_s)

    async def all_models(self) -> list[dict]:
        """Every model, page by page (the repository index and the statistics of all)."""
        return await self._admin(lambda c: c.list())

    async def _model(self, request: web.Request) -> dict:
        """The ModelInfo of the request's model: one look-up, whatever the number of models."""
        return await self.model_info(_model_name(request))

    async def model_info(self, name: str) -> dict:
        return await self._admin(lambda c: c.model(name))

    async def is_ready(self) -> bool:
        """The controller answered within READY_TIMEOUT_S and lists a live worker."""
        try:
            status = await asyncio.wait_for(self._admin(lambda c: c.status(models_limit=0)), READY_TIMEOUT_S)
        except (asyncio.TimeoutError, v2.V2Error):
            return False
        return any(isinstance(w, dict) and w.get("alive") for w in status.get("workers", []))

    def admit(self, name: str, protocol: str, arrived_ns: int) -> None:
        """V2Error 429 when the door sheds an infer that reached the gateway at `arrived_ns`
        (client/door.py); called before its body is parsed."""
        now_ns = time.monotonic_ns()
        if not self.door.sheds(now_ns - arrived_ns, now_ns):
            return
        self.stats.failure(name, Status.QUEUE_FULL, 0)
        self.metrics.answered(name, protocol, Status.QUEUE_FULL, 0.0)
        self.metrics.shed.labels(protocol).inc()
        raise v2.V2Error(429, Status.QUEUE_FULL, f"the request waited {(now_ns - arrived_ns) / 1e6:.1f} ms in the "
                         "gateway, which is behind its input and sheds load", self.config.retry_after_s)

    async def run_infer(self, name: str, req: v2.InferRequest, protocol: str, start_ns: int) -> InferResult:
        """One inference for either protocol (arrived at `start_ns`, see Door.arrival_ns), counted in the
        statistics and the metrics; V2Error on refusal. The controller gets what is left of the
        SLO: what the gateway spent is spent, and the reply will wait about the loop's present
        lag on its way back through it."""
        slo_ns = int(req.slo_ms * 1e6)
        try:
            now_ns = time.monotonic_ns()
            left_ms = req.slo_ms - (now_ns - start_ns + self.door.lag_ns(now_ns)) / 1e6
            if left_ms <= 0:
                raise CapacityError(Status.WOULD_MISS_DEADLINE, f"the request spent its whole {req.slo_ms:g} ms SLO "
                                    "waiting in the gateway")
            result = await self.pool.next().infer(name, req.inputs, slo_ms=left_ms, priority=req.priority)
        except ClockworkError as exc:
            end_ns = time.monotonic_ns()
            took_ns = end_ns - start_ns
            err = v2.error_from(exc, self.config.retry_after_s)
            status = err.status if isinstance(err.status, Status) else exc.status
            if status in (Status.WOULD_MISS_DEADLINE, Status.DEADLINE_MISSED):
                self.door.answered(slo_ns, slo_ns, end_ns)
            self.stats.failure(name, status, took_ns)
            self.metrics.answered(name, protocol, status, took_ns / 1e9)
            raise err from None
        end_ns = time.monotonic_ns()
        took_ns = end_ns - start_ns
        self.door.answered(took_ns, slo_ns, end_ns)
        samples = next(iter(req.inputs.values())).shape[0]
        self.stats.success(name, result, samples, took_ns, time.time_ns() // 1_000_000)
        self.metrics.answered(name, protocol, Status.OK, took_ns / 1e9)
        return result

    # -- health and metadata

    async def prometheus(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def live(self, _request: web.Request) -> web.Response:
        """200 and an empty body, as Triton answers: probes read the status code only."""
        return web.Response(status=200)

    async def ready(self, _request: web.Request) -> web.Response:
        """200 when ready (is_ready), else 503; the body is empty either way (who serves is
        nobody else's business)."""
        return web.Response(status=200 if await self.is_ready() else 503)

    async def metadata(self, _request: web.Request) -> web.Response:
        return web.json_response(self.server_metadata)

    async def model_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(v2.model_metadata(await self._model(request)))

    async def model_config(self, request: web.Request) -> web.Response:
        return web.json_response(v2.model_config(await self._model(request)))

    async def model_ready(self, request: web.Request) -> web.Response:
        info = await self._model(request)
        if not v2.model_ready(info):
            raise v2.V2Error(503, Status.NOT_PREPARED, f"model {info['name']!r} is not prepared on any connected "
                             "worker yet", self.config.retry_after_s)
        return web.json_response({"name": info["name"], "ready": True})

    # -- model repository extension

    async def index(self, request: web.Request) -> web.Response:
        params = await self._json_body(request)
        ready_only = params.get("ready", False) is True
        return web.json_response(v2.repository_index(await self.all_models(), ready_only))

    async def load(self, request: web.Request) -> web.Response:
        """"Load" = the model is registered and prepared on some worker, so the controller can
        make it resident where demand needs it. Models are added with `clockwork upload`."""
        params = v2.as_object((await self._json_body(request)).get("parameters"), "parameters")
        if "config" in params or any(str(k).startswith("file:") for k in params):
            raise v2.bad_input("uploading a model through the v2 repository extension is not supported; "
                               "register it with `clockwork upload` (or client.Client.upload) first")
        await self.wait_prepared(_model_name(request))
        return web.json_response({})

    async def wait_prepared(self, name: str) -> None:
        """Until some worker has prepared the model, up to load_wait_s; V2Error (503) after."""
        deadline = time.monotonic() + self.config.load_wait_s
        while True:
            info = await self.model_info(name)
            if v2.model_ready(info):
                return
            if time.monotonic() >= deadline:
                raise v2.V2Error(503, Status.NOT_PREPARED, f"model {name!r} is registered but no worker prepared it "
                                 f"within {self.config.load_wait_s:g} s", self.config.retry_after_s)
            await asyncio.sleep(0.1)

    async def unload(self, request: web.Request) -> web.Response:
        """Accepted and a no-op: only the controller decides what is resident on a device (it
        evicts idle models when memory is needed). The model stays registered."""
        await self._json_body(request)
        await self._model(request)
        return web.json_response({})

    # -- statistics extension

    async def all_stats(self, _request: web.Request) -> web.Response:
        names = [m.get("name") for m in await self.all_models() if isinstance(m.get("name"), str)]
        return web.json_response(self.stats.document(names))

    async def model_stats(self, request: web.Request) -> web.Response:
        info = await self._model(request)
        return web.json_response(self.stats.document([info["name"]]))

    # -- inference

    async def infer(self, request: web.Request) -> web.Response:
        name = _model_name(request)
        start_ns = self.door.arrival_ns(time.monotonic_ns())
        with self.metrics.in_flight.labels("http").track_inprogress():
            body = await self._read_body(request)
            self.admit(name, "http", start_ns)
            req = v2.parse_infer_request(body, request.headers.get("Inference-Header-Content-Length"),
                                         self.config.default_slo_ms)
            result = await self.run_infer(name, req, "http", start_ns)
        payload, header_length = v2.infer_response(name, req, result)
        if header_length is None:
            return web.Response(body=payload, content_type="application/json")
        return web.Response(body=payload, content_type="application/octet-stream",
                            headers={"Inference-Header-Content-Length": str(header_length)})

    # -- bodies

    async def _read_body(self, request: web.Request) -> bytes:
        try:
            return await within(request.read(), self.config.body_timeout_s)
        except asyncio.TimeoutError:
            raise v2.V2Error(408, Status.BAD_MESSAGE, f"the request body did not arrive within "
                             f"{self.config.body_timeout_s:g} s (is Content-Length right?)") from None
        except (web.RequestPayloadError, HttpProcessingError) as exc:  # e.g. a body that is not the gzip it says
            raise v2.V2Error(400, Status.BAD_MESSAGE, f"unreadable request body: {exc}") from None

    async def _json_body(self, request: web.Request) -> dict:
        """An optional JSON object body (repository calls); empty is {}."""
        body = await self._read_body(request)
        if not body.strip():
            return {}
        doc = v2.load_json(memoryview(body))
        if not isinstance(doc, dict):
            raise v2.bad_input("the request body must be a JSON object")
        return doc


async def within(awaitable: Awaitable[Any], timeout_s: float) -> Any:
    """`awaitable`, or asyncio.TimeoutError after `timeout_s`, in the caller's task: wait_for runs
    it in a task of its own, two more turns of the event loop per request, which a saturated
    gateway pays in milliseconds each."""
    if sys.version_info < (3, 11):
        return await asyncio.wait_for(awaitable, timeout_s)
    async with asyncio.timeout(timeout_s):
        return await awaitable


def _model_name(request: web.Request) -> str:
    """The model a /v2/models/{model}[/versions/{version}] path names; 404 for a version other
    than 1 or a name no model could have."""
    name = request.match_info["model"]
    v2.check_version(name, request.match_info.get("version"))
    try:
        return schema.MODEL_NAME(name, "model")
    except BadMessage as exc:
        raise v2.V2Error(404, Status.MODEL_NOT_FOUND, exc.detail) from None


@web.middleware
async def v2_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    """Every refusal as a v2 error body {"error": "STATUS_NAME: detail"}; our own bugs as 500."""
    try:
        return await handler(request)
    except v2.V2Error as err:
        if err.http_status >= 500:
            log.warning("refused", path=request.path, http_status=err.http_status, error=err.message)
        return web.Response(status=err.http_status, body=err.body(), content_type="application/json",
                            headers=err.headers())
    except web.HTTPException as exc:  # aiohttp's own: unknown route (404), method (405), too large (413)
        if exc.status < 400:
            raise
        name = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: Status.TOO_LARGE.name}.get(exc.status, "BAD_MESSAGE")
        detail = exc.text if exc.status == 413 else f"{exc.reason}: {request.method} {request.path}"
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return web.Response(status=exc.status, body=v2.V2Error(exc.status, name, detail).body(),
                            content_type="application/json", headers=headers)
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a bug of ours: answer, log, keep serving
        log.exception("internal_error", path=request.path)
        return web.Response(status=500, body=v2.V2Error(500, Status.INTERNAL, repr(exc)).body(),
                            content_type="application/json")


def make_app(config: GatewayConfig) -> web.Application:
    gateway = Gateway(config)
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[v2_errors])
    app[GATEWAY] = gateway
    app.add_routes(gateway.routes())
    app.on_startup.append(gateway.on_startup)
    app.on_cleanup.append(gateway.on_cleanup)
    return app


async def serve(config: GatewayConfig, stop: asyncio.Event | None = None) -> None:
    """Listen until `stop` is set (or SIGTERM/SIGINT), then stop accepting, give requests in
    flight up to shutdown_timeout_s, and close the controller connections."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    runner = web.AppRunner(make_app(config), access_log=None, handler_cancellation=True,
                           shutdown_timeout=config.shutdown_timeout_s)
    await runner.setup()
    grpc_server = None
    try:
        site = web.TCPSite(runner, config.host, config.port, reuse_address=True,
                           reuse_port=config.process_index is not None)
        await site.start()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        if config.grpc_port:
            from clockwork.client import grpc_gateway  # grpcio only where gRPC is served

            grpc_server = await grpc_gateway.start(runner.app[GATEWAY], config.grpc_host, config.grpc_port,
                                                   config.max_body_bytes, log)
        log.info("listening", addresses=[f"{a[0]}:{a[1]}" for a in runner.addresses], controller=config.controller,
                 grpc=f"{config.grpc_host}:{config.grpc_port}" if config.grpc_port else None,
                 connections=config.connections, default_slo_ms=config.default_slo_ms, process=config.process_index)
        await stop.wait()
        log.info("stopping")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        if grpc_server is not None:
            await grpc_server.stop(config.shutdown_timeout_s)
        await runner.cleanup()


# ----------------------------------------------------------------------------- command line


def parse_listen(text: str) -> tuple[str, int]:
    """"HOST:PORT" (or "[::1]:PORT") -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def parse_args(argv: Sequence[str] | None) -> tuple[GatewayConfig, str]:
    d = GatewayConfig()
    p = argparse.ArgumentParser(prog="clockwork-gateway", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    p.add_argument("--listen", type=parse_listen, default=f"{d.host}:{d.port}", help="HOST:PORT to serve HTTP on")
    p.add_argument("--grpc-listen", type=parse_listen, default=None,
                   help="HOST:PORT to serve the v2 gRPC protocol on as well (Triton's is 8001); default: off")
    p.add_argument("--controller", default=argparse.SUPPRESS, help=f"controller client endpoint "
                   f"(default: $CLOCKWORK_ENDPOINT or {DEFAULT_ENDPOINT})")
    p.add_argument("--connections", type=_positive(int), default=d.connections,
                   help="controller connections (AsyncClients), used round-robin")
    p.add_argument("--default-slo-ms", type=_positive(float), default=d.default_slo_ms,
                   help="SLO of a request that sets no parameters.timeout")
    p.add_argument("--max-body-mb", type=_positive(float), default=d.max_body_bytes / MiB,
                   help="largest request body accepted (413 above)")
    p.add_argument("--body-timeout-s", type=_positive(float), default=d.body_timeout_s,
                   help="time to receive a request body (408 after)")
    p.add_argument("--admin-timeout-s", type=_positive(float), default=d.admin_timeout_s,
                   help="time for the controller to answer LIST/STATUS (503 after)")
    p.add_argument("--load-wait-s", type=float, default=d.load_wait_s,
                   help="repository load: how long to wait for a worker to prepare the model")
    p.add_argument("--retry-after-s", type=_positive(int), default=d.retry_after_s,
                   help="Retry-After sent with 429 and 503")
    p.add_argument("--shutdown-timeout-s", type=float, default=d.shutdown_timeout_s,
                   help="on SIGTERM, time given to requests in flight")
    p.add_argument("--shed-lag-ms", type=float, default=d.shed_lag_ms,
                   help="answer infers 429 while the event loop stands this far behind (0: never)")
    p.add_argument("--shed-ceiling-ms", type=float, default=d.shed_ceiling_ms,
                   help="answer an infer 429 at once when it waited this long in the gateway (0: no ceiling)")
    p.add_argument("--avoid-lane-cores", action=argparse.BooleanOptionalAction, default=d.avoid_lane_cores,
                   help="keep off the CPU cores the EXEC lanes of workers on this host hold")
    p.add_argument("--keep-cores-awake", action=argparse.BooleanOptionalAction, default=d.keep_cores_awake,
                   help="keep this host's idle cores polling while serving (a CPU latency request)")
    p.add_argument("--min-cores-left", type=_positive(int), default=d.min_cores_left,
                   help="keep off the lanes' cores only where at least this many cores are left")
    p.add_argument("--processes", type=_positive(int), default=1,
                   help="gateway processes sharing the port (SO_REUSEPORT), each with its own controller connections")
    p.add_argument("--process-index", type=int, default=None, help=argparse.SUPPRESS)  # set by the supervisor
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="log level of the JSON lines on stderr")
    a = p.parse_args(argv)
    listen = a.listen if isinstance(a.listen, tuple) else parse_listen(a.listen)
    controller = getattr(a, "controller", None) or default_endpoint()
    grpc_listen = a.grpc_listen or (d.grpc_host, 0)
    config = GatewayConfig(host=listen[0], port=listen[1], grpc_host=grpc_listen[0], grpc_port=grpc_listen[1],
                           controller=controller,
                           connections=a.connections, default_slo_ms=a.default_slo_ms,
                           max_body_bytes=int(a.max_body_mb * MiB), body_timeout_s=a.body_timeout_s,
                           admin_timeout_s=a.admin_timeout_s, load_wait_s=max(0.0, a.load_wait_s),
                           retry_after_s=a.retry_after_s, shutdown_timeout_s=max(0.0, a.shutdown_timeout_s),
                           shed_lag_ms=a.shed_lag_ms, shed_ceiling_ms=a.shed_ceiling_ms, processes=a.processes,
                           process_index=a.process_index,
                           avoid_lane_cores=a.avoid_lane_cores, min_cores_left=a.min_cores_left,
                           keep_cores_awake=a.keep_cores_awake)
    return config, a.log_level


def main(argv: Sequence[str] | None = None) -> int:
    config, level = parse_args(argv)
    global log
    log = logsetup.configure(level, "gateway")
    if config.processes > 1 and config.process_index is None:
        from clockwork.client.gateway_processes import supervise

        return supervise(sys.argv[1:] if argv is None else list(argv), config.processes, log)
    from clockwork.common.gc_tuning import tune_for_serving

    tune_for_serving()  # as the controller and the worker do: its imports frozen, fewer collections
    try:
        with cpu_latency.held(0, log, config.keep_cores_awake):
            asyncio.run(serve(config))
    except OSError as exc:  # e.g. the port is taken
        log.error("cannot_listen", host=config.host, port=config.port, error=str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
