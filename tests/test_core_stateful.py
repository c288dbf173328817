"""The scheduling core under random sequences of events (hypothesis' stateful testing).

Rules: workers join, restart and heartbeat; models are uploaded and removed; requests of
several priorities, sizes and deadlines arrive and are cancelled; time passes; actions come
back OK, TOO_LATE or never. After every step controller/invariants.py's `check_invariants` runs, and this
test checks what a client and a worker would see:

- every admitted request is answered exactly once, and nothing is answered twice;
- no EXEC can run past a member's deadline: latest start + predicted duration <= deadline;
- a cancelled request never appears in a later EXEC;
- no UNLOAD is sent for a model with an EXEC outstanding on that device;
- every action's window is well formed (earliest <= latest).

The FIFO baselines (controller/baseline.py) run the same machine with the same checks, less the
deadline windows, which they do not have.

CI runs a bounded number of examples; CLOCKWORK_STATEFUL_EXAMPLES=2000 runs longer.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from clockwork.common import schema
from clockwork.common.status import Status
from clockwork.common.tensors import Tensor
from clockwork.common.config import SchedulerConfig
from clockwork.controller.baseline import NO_WINDOW_NS, BaselineConfig, FifoPolicy
from clockwork.controller.core import Core
from clockwork.controller.effects import PrepareOn, ToClient, ToWorker
from clockwork.controller.invariants import check_invariants
from tests.factories import CLIENT, EXEC_NS, LOAD_NS, MIB, MS, SIG, make_core, result_for

MODELS = ("a", "b", "c", "d")
WORKERS = ("w1", "w2")
REPLY_NS = MS  # make_core's reply allowance: a request's deadline is its SLO less this


class CoreMachine(RuleBasedStateMachine):
    windows_keep_deadlines = True  # the FIFO baselines send EXECs without windows

    def make(self):
        return make_core(worker_timeout_ns=300 * MS)

    @initialize()
    def start(self):
        self.core = self.make()
        self.now = 0
        self.joined: set[str] = set()
        self.outstanding: dict[int, ToWorker] = {}  # actions sent and not yet answered (or lost)
        self.deadlines: dict[int, int] = {}  # request id -> deadline, for admitted ones still live
        self.sent: set[int] = set()  # every request id sent
        self.replies: Counter[int] = Counter()
        self.cancelled: set[int] = set()
        self.next_id = 1
        self.core.tick(0)

    # ------------------------------------------------------------------ effects

    def absorb(self, effects: list) -> None:
        for effect in effects:
            if isinstance(effect, ToClient):
                self.replies[effect.request_id] += 1
                assert self.replies[effect.request_id] == 1, f"request {effect.request_id} answered twice"
                self.deadlines.pop(effect.request_id, None)
            elif isinstance(effect, PrepareOn):
                self.absorb(self.core.on_prepared(effect.worker, schema.Prepared(
                    model_id=effect.model, status=Status.OK, weights_bytes=100 * MIB, load_ns=LOAD_NS,
                    exec_ns=EXEC_NS, max_batch=16), self.now))
            elif isinstance(effect, ToWorker) and isinstance(effect.body, (schema.Load, schema.Unload, schema.Exec)):
                body = effect.body
                assert body.earliest_ns <= body.latest_ns, body
                if isinstance(body, schema.Exec):
                    self.check_exec(body)
                else:
                    self.check_unload(effect)
                self.outstanding[effect.msg_id] = effect

    def check_exec(self, body: schema.Exec) -> None:
        ids = {int(v) for t in body.tensors for v in t.array()[:, 0]}
        assert not ids & self.cancelled, f"cancelled requests {ids & self.cancelled} in an EXEC"
        for request_id in ids if self.windows_keep_deadlines else ():
            assert body.latest_ns + body.expected_ns <= self.deadlines[request_id], \
                f"EXEC of {request_id} may start at {body.latest_ns} and take {body.expected_ns}: past its deadline"

    def check_unload(self, effect: ToWorker) -> None:
        if isinstance(effect.body, schema.Unload):
            busy = [a for a in self.outstanding.values() if isinstance(a.body, schema.Exec) and a.worker == effect.worker
                    and a.body.device_id == effect.body.device_id and a.body.model_id == effect.body.model_id]
            assert not busy, f"UNLOAD of {effect.body.model_id} while an EXEC of it is outstanding"

    # ------------------------------------------------------------------ rules

    @rule(name=st.sampled_from(WORKERS))
    def join(self, name):
        """A worker joins, or says HELLO again (a restart: its work is lost)."""
        if name in self.joined:  # what it was executing is gone with it
            self.outstanding = {k: a for k, a in self.outstanding.items() if a.worker != name}
        self.joined.add(name)
        msg = schema.Hello(worker=name, runtime="emulated", formats=("profile",), devices=tuple(
            {"device_id": i, "kind": "emulated" if name == WORKERS[0] else "emulated-b", "memory_bytes": 3 * 112 * MIB,
             "page_bytes": 16 * MIB}
            for i in range(2)))  # three 100 MB models per device: evictions happen; two kinds of device
        self.absorb(self.core.on_hello(name, msg, self.now))

    @rule(name=st.sampled_from(MODELS))
    def upload(self, name):
        if name not in self.core.models:
            self.absorb(self.core.on_upload(name, "profile", SIG, CLIENT, 0, self.now))

    @rule(name=st.sampled_from(MODELS))
    def remove(self, name):
        self.absorb(self.core.on_remove(name, self.now)[1])

    @rule(model=st.sampled_from(MODELS), slo_ms=st.sampled_from([3, 15, 40, 200]), priority=st.integers(0, 2),
          samples=st.integers(1, 3))
    def request(self, model, slo_ms, priority, samples):
        request_id, self.next_id = self.next_id, self.next_id + 1
        self.sent.add(request_id)
        x = np.full((samples, 4), request_id, dtype=np.float32)
        msg = schema.Infer(model=model, slo_ns=slo_ms * MS, priority=priority, tensors=(Tensor.from_array("x", x),))
        self.deadlines[request_id] = self.now + slo_ms * MS - REPLY_NS
        self.absorb(self.core.on_request(CLIENT, request_id, msg, self.now))

    @precondition(lambda self: self.deadlines)
    @rule(data=st.data())
    def cancel(self, data):
        request_id = data.draw(st.sampled_from(sorted(self.deadlines)))
        cancelled, _, effects = self.core.on_cancel(CLIENT, request_id, self.now)
        if cancelled:
            self.cancelled.add(request_id)
        self.absorb(effects)

    @rule(dt_ms=st.sampled_from([0, 0.5, 1, 3, 10]))
    def tick(self, dt_ms):
        self.now += int(dt_ms * MS)
        for name in self.joined:
            self.core.on_heartbeat(name, 1, self.now, True, self.now)
        self.absorb(self.core.tick(self.now))

    @precondition(lambda self: self.outstanding)
    @rule(data=st.data(), outcome=st.sampled_from(["ok", "ok", "ok", "too_late", "lost"]))
    def result(self, data, outcome):
        msg_id = data.draw(st.sampled_from(sorted(self.outstanding)))
        effect = self.outstanding.pop(msg_id)
        if outcome == "lost":
            return  # the core gives up on it after its window and a grace
        expected = getattr(effect.body, "expected_ns", 0)
        self.now = max(self.now, effect.body.earliest_ns + expected)
        status = Status.OK if outcome == "ok" else Status.TOO_LATE
        self.absorb(result_for(self.core, effect, self.now, status))

    # ------------------------------------------------------------------ checks

    @invariant()
    def consistent(self):
        if hasattr(self, "core"):
            check_invariants(self.core, self.now)

    def teardown(self):
        """Let everything finish: every admitted request is answered, exactly once."""
        if not hasattr(self, "core"):
            return
        for step in range(400):
            if not self.core.requests:
                break
            for msg_id in sorted(self.outstanding):
                effect = self.outstanding.pop(msg_id)
                self.now = max(self.now, effect.body.earliest_ns + getattr(effect.body, "expected_ns", 0))
                self.absorb(result_for(self.core, effect, self.now))
            # a lost result is given up on after its window: hours for the baselines, which have none
            self.tick(5 if step < 300 else 2 * NO_WINDOW_NS / MS)
            check_invariants(self.core, self.now)
        assert not self.core.requests, f"{len(self.core.requests)} requests never answered"
        assert all(self.replies[i] == 1 for i in self.sent), "a request was not answered exactly once"


class DryRunMachine(CoreMachine):
    """Clockwork's policy with admission in a dry run: requests it would refuse as too late are
    served instead. Same rules and checks."""

    def make(self):
        return make_core(worker_timeout_ns=300 * MS, admission_dry_run=True)


class FifoMachine(CoreMachine):
    """Baseline (a): FIFO, dynamic batching, no admission. Same rules and checks, except that its
    EXECs carry no deadline windows (it runs late work by design)."""

    windows_keep_deadlines = False

    def make(self):
        return Core(SchedulerConfig(reply_ns=MS, worker_timeout_ns=300 * MS), FifoPolicy(BaselineConfig()))


class FifoTimeoutMachine(FifoMachine):
    """Baseline (b): (a) with a queue timeout at each request's SLO."""

    def make(self):
        return Core(SchedulerConfig(reply_ns=MS, worker_timeout_ns=300 * MS), FifoPolicy(BaselineConfig(queue_timeout=True)))


SETTINGS = settings(max_examples=int(os.environ.get("CLOCKWORK_STATEFUL_EXAMPLES", "60")), stateful_step_count=60,
                    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestCore = CoreMachine.TestCase
TestDryRun = DryRunMachine.TestCase
TestFifo = FifoMachine.TestCase
TestFifoTimeout = FifoTimeoutMachine.TestCase
TestCore.settings = TestDryRun.settings = TestFifo.settings = TestFifoTimeout.settings = SETTINGS
