"""The emulated runtime: pretend GPUs that follow a latency profile.

A model is a JSON profile (common.models.parse_profile): weights bytes, load time and exec time
per batch size. LOAD waits the load time; EXEC waits the exec time of the smallest profiled
batch size that holds the batch, then returns zero-filled outputs of the declared shapes. Waits
are precise (sleep, then spin the last stretch), so a device follows its profile within ~0.1 ms
while a core is free. One process can pretend to be any number of devices: this is how the
system is tested at scale without GPUs, and the controller cannot tell the difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clockwork.common.clock import monotonic_ns, wait_until
from clockwork.common.config import HOST_DEVICE_MEMORY_BYTES
from clockwork.common.models import EmulatedProfile, Signature, parse_profile
from clockwork.common.status import Status
from clockwork.worker.runtimes.base import DeviceInfo, PreparedModel, Profile, Runtime, RuntimeFailure


@dataclass(frozen=True)
class _Handle:
    profile: EmulatedProfile
    signature: Signature


def exec_ns_for(profile: EmulatedProfile, batch_size: int) -> int:
    """Exec time of the smallest profiled batch size >= batch_size (the largest if none is)."""
    fits = [b for b in profile.exec_ns if b >= batch_size]
    return profile.exec_ns[min(fits)] if fits else profile.exec_ns[max(profile.exec_ns)]


class EmulatedRuntime(Runtime):
    name = "emulated"
    formats = ("profile",)

    def __init__(self, config):
        self._config = config
        self._kind = "emulated"

    def devices(self) -> list[DeviceInfo]:
        return [DeviceInfo(i, self._kind, self._config.device_memory_bytes or HOST_DEVICE_MEMORY_BYTES) for i in range(self._config.devices)]

    def prepare(self, model_id: str, digest: str, fmt: str, blob: bytes, signature: Signature) -> PreparedModel:
        if fmt != "profile":
            raise RuntimeFailure(Status.BAD_MODEL, f"the emulated runtime serves latency profiles, not {fmt!r}")
        profile = parse_profile(blob, signature.max_batch)
        return PreparedModel(model_id, digest, signature, profile.weights_bytes, profile)

    def profile(self, device_id: int, model: PreparedModel, batch_sizes: list[int], runs: int) -> Profile:
        # The profile is the truth here: measuring our own waits would only measure the sleep.
        prof: EmulatedProfile = model.host
        return Profile(prof.load_ns, {b: exec_ns_for(prof, b) for b in batch_sizes})

    def load(self, device_id: int, model: PreparedModel) -> _Handle:
        wait_until(monotonic_ns() + model.host.load_ns)
        return _Handle(model.host, model.signature)

    def unload(self, device_id: int, handle: _Handle) -> None:
        pass

    def execute(self, device_id: int, handle: _Handle,
                inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int | None]:
        start = monotonic_ns()
        batch = next(iter(inputs.values())).shape[0] if inputs else 1
        outputs = {
            spec.name: np.zeros((batch, *(1 if d < 0 else d for d in spec.shape)), dtype=spec.dtype)
            for spec in handle.signature.outputs
        }
        wait_until(start + exec_ns_for(handle.profile, batch))
        return outputs, None
