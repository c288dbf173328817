"""The on-disk cache of TensorRT plans, so a worker restart never rebuilds an engine.

A plan is only valid for the TensorRT version that built it and the GPU kind it was built on,
and it bakes in the optimization profile (hence the model's batch limit and input shapes, which
the model digest covers). The key holds all of these; any change gives a new file. Layout:

    <engine_cache_dir>/<gpu-name>-sm<cc>/trt-<version>/<digest[:16]>-<key[:16]>.plan   (+ .json)

so that an operator can delete one GPU kind's or one TensorRT version's plans with one `rm -r`.
The .json beside each plan spells out its key for humans. Writes go to a temporary file that is
renamed into place, so two workers sharing the directory never see half a plan; a file that does
not deserialize is discarded by the runtime and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Bump when what goes into a plan changes in a way the other fields do not capture.
PLAN_FORMAT = 1


@dataclass(frozen=True)
class PlanKey:
    digest: str  # the model's digest: its bytes, input shapes and batch limit
    trt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    max_batch: int  # the optimization profile's max (and opt) batch
    opt_batch: int
    builder_workspace_bytes: int  # limits the tactics the builder may pick
    plan_format: int = PLAN_FORMAT

    def hexdigest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "unknown"


class PlanCache:
    def __init__(self, directory: str | os.PathLike, log: Any):
        self.directory = Path(os.path.expanduser(os.fspath(directory)))
        self._log = log

    def path_for(self, key: PlanKey) -> Path:
        major, minor = key.compute_capability
        folder = self.directory / f"{_slug(key.gpu_name)}-sm{major}{minor}" / f"trt-{_slug(key.trt_version)}"
        return folder / f"{key.digest[:16]}-{key.hexdigest()[:16]}.plan"

    def get(self, key: PlanKey) -> bytes | None:
        """The cached plan, or None (missing or unreadable: either way, build it)."""
        path = self.path_for(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._log.warning("engine cache unreadable; rebuilding", path=str(path), error=str(exc))
            return None

    def put(self, key: PlanKey, plan: bytes | memoryview) -> Path | None:
        """Store a plan atomically. A cache that cannot be written costs a rebuild later, nothing now."""
        path = self.path_for(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write_atomic(path, plan)
            meta = {**asdict(key), "key": key.hexdigest(), "plan_bytes": len(memoryview(plan))}
            self._write_atomic(path.with_suffix(".json"), json.dumps(meta, indent=1).encode())
        except OSError as exc:
            self._log.warning("engine cache not written", path=str(path), error=str(exc))
            return None
        return path

    def discard(self, key: PlanKey) -> None:
        path = self.path_for(key)
        for stale in (path, path.with_suffix(".json")):
            try:
                stale.unlink()
            except OSError:
                pass

    @staticmethod
    def _write_atomic(path: Path, data: bytes | memoryview) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
