"""A device's LOAD and EXEC lanes, run as the worker runs them, for the GPU checks in bench/.

The checks time a runtime's calls on the threads the worker would make them on: `worker.lanes.Lane`
threads that call the runtime's lane_started / lane_stopped. They call the runtime directly
rather than through the worker's `Device`, because they time the runtime itself, not the
action windows around it (docs/architecture.md, departures).
"""

from __future__ import annotations

from typing import Any, Callable

from clockwork.worker.lanes import Lane, run_on


class DeviceLanes:
    """A device's LOAD and EXEC lanes, as the worker runs them; `call` runs fn on one and waits."""

    def __init__(self, runtime: Any, device_id: int, log: Any):
        self.load = self._lane(runtime, device_id, "load", log)
        self.exec = self._lane(runtime, device_id, "exec", log)
        self.load.start()
        self.exec.start()

    @staticmethod
    def _lane(runtime: Any, device_id: int, kind: str, log: Any) -> Lane:
        return Lane(f"dev{device_id}-{kind}", log, on_start=lambda: runtime.lane_started(device_id, kind),
                    on_stop=lambda: runtime.lane_stopped(device_id, kind))

    @staticmethod
    def call(lane: Lane, fn: Callable[[], Any], label: str = "gpu-check") -> Any:
        return run_on(lane, fn, label).result()

    def stop(self) -> None:
        self.load.stop()
        self.exec.stop()
