"""`clockwork-bench codec`: what the codec costs on the messages every request makes.

The codec reads a header with msgspec, in C, against a Struct derived from the schema's checks,
and falls back to the checks themselves only for a message msgspec refuses (common/codec.py).
This weighs, on the four messages of a batch-1 request (INFER, EXEC, RESULT, INFER_REPLY, each
with one 3x64x64 float32 tensor, as in `clockwork-bench versus`):

- `codec.encode` and `codec.decode`, as every daemon calls them;
- `codec.decode_checked`, the reference reader (every field through common/checks.py), which is
  how every message was read before msgspec was: the ratio says what the fast path saves;

and what the controller spends on its codec per batch-1 request (decoding INFER and RESULT,
encoding EXEC and INFER_REPLY) either way. Medians of five timings, in the same run.

    clockwork-bench codec [--repeat 20000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from clockwork.common import codec, schema
from clockwork.common.status import Status
from clockwork.common.tensors import Tensor

READERS = ("encode", "decode", "checked_decode")


def hot_messages() -> dict[str, schema.Message]:
    """The four messages of a batch-1 request, with the tensor `versus` sends."""
    image = Tensor.from_array("input", np.zeros((1, 3, 64, 64), np.float32))
    logits = Tensor.from_array("logits", np.zeros((1, 10), np.float32))
    return {
        "INFER": schema.Infer(model="cnn", slo_ns=15_000_000, tensors=(image,)),
        "EXEC": schema.Exec(device_id=0, model_id="cnn", batch_size=1, earliest_ns=10**12, latest_ns=10**12 + 5 * 10**6,
                            expected_ns=400_000, tensors=(image,)),
        "RESULT": schema.Result(action=schema.ActionKind.EXEC, status=Status.OK, device_id=0, model_id="cnn",
                                begin_ns=10**12, end_ns=10**12 + 400_000, duration_ns=400_000, batch_size=1,
                                tensors=(logits,)),
        "INFER_REPLY": schema.InferReply(status=Status.OK, queue_ns=150_000, exec_ns=400_000, total_ns=900_000,
                                         lane_start_ns=300_000, lane_end_ns=700_000, batch_size=1, batch_samples=1,
                                         worker="w1", tensors=(logits,)),
    }


IDS = (1 << 40, 1 << 40, 1 << 41)  # msg_id, parent_id, sent_ns as a running system has them


def per_call_us(fn: Callable[[], Any], repeat: int) -> float:
    """Median of five timings of `repeat` calls, in us per call."""
    runs = []
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(repeat):
            fn()
        runs.append((time.perf_counter_ns() - t0) / repeat / 1e3)
    return sorted(runs)[2]


def measure(repeat: int) -> dict[str, dict[str, float]]:
    out = {}
    for name, body in hot_messages().items():
        frames = [bytes(f) for f in codec.encode(body, *IDS)]
        out[name] = {
            "encode": per_call_us(lambda: codec.encode(body, *IDS), repeat),
            "decode": per_call_us(lambda: codec.decode(frames), repeat),
            "checked_decode": per_call_us(lambda: codec.decode_checked(frames), repeat),
        }
    return out


def controller_per_request_us(figures: dict[str, dict[str, float]], decode: str = "decode") -> float:
    """What the controller spends on its codec per batch-1 request: INFER and RESULT in (read
    by `decode`), EXEC and INFER_REPLY out."""
    return (figures["INFER"][decode] + figures["RESULT"][decode]
            + figures["EXEC"]["encode"] + figures["INFER_REPLY"]["encode"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clockwork-bench codec", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20_000, help="calls per timing (five timings, median)")
    args = parser.parse_args(argv)
    figures = measure(args.repeat)
    print(f"{'message':12s} {'encode':>8s} {'decode':>8s} {'decode by the checks':>21s}  (us per call)")
    for name, f in figures.items():
        print(f"{name:12s} {f['encode']:8.2f} {f['decode']:8.2f} {f['checked_decode']:21.2f}")
    fast, checked = controller_per_request_us(figures), controller_per_request_us(figures, "checked_decode")
    print(f"the controller's codec per batch-1 request: {fast:.2f} us; reading by the checks alone, {checked:.2f} us "
          f"(codec / checks = {fast / checked:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
