"""Fuzzing campaigns for every decoder that reads untrusted bytes.

Targets: the protocol codec (`common.codec.split` and `decode`: every message type, and bundles
of them), the emulated-profile parser, the ONNX signature reader, and the client's reply reader.
A target may only refuse input with its documented error (`BadMessage`, or `ClockworkError` in
the client); any other exception is a crash, printed with the input that caused it and saved
under --crashes.

Engines:
- `mutate` (default, no extra packages): mutates valid seed messages (bit flips, byte
  insertions and deletions, truncation, frames dropped or duplicated, integer boundary values)
  and, one time in four, feeds raw random frames.
- `atheris` (`pip install '.[fuzz]'`): coverage-guided libFuzzer; pass its flags after `--`,
  e.g. `python -m clockwork.bench.fuzz codec --engine atheris -- -max_total_time=3600`.

A long campaign, as documented in docs/benchmarks.md:
    python -m clockwork.bench.fuzz all --seconds 3600
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np

from clockwork.bench.models import mlp_onnx, profile_json, tiny_onnx
from clockwork.client.errors import ClockworkError
from clockwork.common import schema
from clockwork.common.checks import BadMessage
from clockwork.common.codec import bundle, decode, encode, split
from clockwork.common.models import onnx_signature, parse_profile
from clockwork.common.status import Status
from clockwork.common.tensors import Tensor

INTERESTING_INTS = (0, 1, -1, 2**31 - 1, 2**31, 2**32, 2**63 - 1, -(2**63), 2**64 - 1)
DEEP = "deep-nesting-goes-here"  # replaced, once packed, by DEEP_MARK's nested arrays
DEEP_MARK = msgspec.msgpack.encode(DEEP)


def _seed_messages() -> list[list[bytes]]:
    x = Tensor.from_array("x", np.arange(8, dtype=np.float32).reshape(2, 4))
    bodies = [
        schema.Infer(model="m", slo_ns=10**8, priority=1, tensors=(x,)),
        schema.Upload(name="m", format="profile", blob=profile_json()),
        schema.Hello(worker="w", runtime="emulated", formats=("profile",),
                     devices=({"device_id": 0, "kind": "k", "memory_bytes": 1 << 30, "page_bytes": 1 << 24},)),
        schema.Result(action="exec", status=Status.OK, device_id=0, model_id="m", tensors=(x,)),
        schema.Prepared(model_id="m", status=Status.OK, exec_ns={1: 5, 16: 9}),
        schema.Exec(device_id=0, model_id="m", batch_size=4, earliest_ns=1, latest_ns=2, tensors=(x, x)),
        schema.InferReply(status=Status.OK, tensors=(x,)),
        schema.Reply(status=Status.OK, body={"models": [{"name": "m", "inputs": []}], "total": 3, "next": "m"}),
        schema.ListModels(prefix="m", after="l", limit=5), schema.GetModel(name="m"),
    ]
    messages = [[bytes(f) for f in encode(body, 7, 3, 11)] for body in bodies]
    return [*messages, bundle(messages[:3]), bundle(messages[5:])]  # bundles of several, as sent


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[rng.randint(0, len(buf)):rng.randint(0, len(buf))] = os.urandom(rng.randint(1, 8))
        elif op == 2 and buf:
            i = rng.randrange(len(buf))
            del buf[i:i + rng.randint(1, 8)]
        elif op == 3:
            buf = buf[:rng.randint(0, len(buf))]
        elif buf:
            buf[rng.randrange(len(buf))] = rng.choice((0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xCF, 0xDF, 0xFF))
    return bytes(buf)


def _mutate_header(frame: bytes, rng: random.Random) -> bytes:
    """Keep it msgpack but put hostile values in its fields."""
    try:
        header = msgspec.msgpack.decode(frame)
    except Exception:
        return frame
    if not isinstance(header, dict) or not header:
        return frame
    key = rng.choice([*header, "unknown"])  # unknown keys are skipped, not validated
    header[key] = rng.choice([*INTERESTING_INTS, "", "x" * 300, None, [], {}, [1, 2], {"a": 1}, 1.5, b"\0", DEEP])
    try:
        packed = msgspec.msgpack.encode(header)
    except (msgspec.EncodeError, OverflowError, TypeError, ValueError):
        return frame
    # Nesting deeper than any decoder follows (msgspec raises RecursionError even in a field it
    # would skip): written as bytes, since no encoder writes it.
    return packed.replace(DEEP_MARK, b"\x91" * rng.choice((100, 1_000, 20_000)) + b"\x00", 1)


def mutate(seed: list[bytes], rng: random.Random) -> list[bytes]:
    if rng.random() < 0.25:
        return [os.urandom(rng.randint(0, 64)) for _ in range(rng.randint(0, 4))]
    frames = list(seed)
    choice = rng.randrange(4)
    if choice == 0:
        frames[0] = _mutate_header(frames[0], rng)
    elif choice == 1:
        i = rng.randrange(len(frames))
        frames[i] = _mutate_bytes(frames[i], rng)
    elif choice == 2 and len(frames) > 1:
        del frames[rng.randrange(1, len(frames))]
    else:
        frames.append(frames[rng.randrange(len(frames))])
    return frames


# ------------------------------------------------------------------------------ targets


def target_codec(frames: list[bytes]) -> None:
    """As the daemons read: split a bundle (or take the one message), then decode each part."""
    try:
        parts = split(frames)
    except BadMessage:
        return
    for head, part in parts:
        try:
            env = decode(part, head)
        except BadMessage:
            continue
        for t in getattr(env.body, "tensors", ()):  # a decoded tensor must be usable as an array
            t.array()


def target_client(frames: list[bytes]) -> None:
    from clockwork.client import protocol

    for incoming in protocol.read_incoming(frames):
        if incoming.envelope is None:
            continue
        for parse in (protocol.parse_infer_reply, protocol.parse_reply, protocol.parse_list_reply,
                      protocol.parse_model_reply, protocol.parse_status_reply, protocol.parse_upload_reply):
            try:
                parse(incoming.envelope)
            except ClockworkError:
                pass


def target_profile(frames: list[bytes]) -> None:
    try:
        parse_profile(b"".join(frames))
    except BadMessage:
        pass


def target_onnx(frames: list[bytes]) -> None:
    try:
        onnx_signature(b"".join(frames), {})
    except BadMessage:
        pass


TARGETS: dict[str, tuple[Callable[[list[bytes]], None], Callable[[], list[list[bytes]]]]] = {
    "codec": (target_codec, _seed_messages),
    "client": (target_client, _seed_messages),
    "profile": (target_profile, lambda: [[profile_json()]]),
    "onnx": (target_onnx, lambda: [[tiny_onnx()], [mlp_onnx((8, 8, 4))]]),
}


def run_mutate(name: str, seconds: float, max_runs: int, seed: int, crashes_dir: Path | None,
               progress: bool = True) -> tuple[int, int]:
    """Fuzz one target; returns (inputs run, crashes)."""
    target, seeds = TARGETS[name]
    corpus = seeds()
    rng = random.Random(seed)
    runs = crashes = 0
    start = last = time.monotonic()
    while runs < max_runs and time.monotonic() - start < seconds:
        frames = mutate(rng.choice(corpus), rng)
        runs += 1
        try:
            target(frames)
        except Exception:
            crashes += 1
            print(f"CRASH in {name}: frames={frames!r}\n{traceback.format_exc()}", file=sys.stderr)
            if crashes_dir is not None:
                crashes_dir.mkdir(parents=True, exist_ok=True)
                (crashes_dir / f"{name}-{runs}.msgpack").write_bytes(msgspec.msgpack.encode(frames))
        if progress and time.monotonic() - last >= 5:
            last = time.monotonic()
            print(f"fuzz {name}: {runs} inputs, {crashes} crashes, {last - start:.0f} s", file=sys.stderr)
    return runs, crashes


def run_atheris(name: str, extra: list[str]) -> int:  # pragma: no cover - needs the optional package
    import atheris

    target, _ = TARGETS[name]

    def one(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        frames = [fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256)) for _ in range(fdp.ConsumeIntInRange(0, 5))]
        target(frames)

    atheris.Setup([sys.argv[0], *extra], one)
    atheris.Fuzz()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="clockwork-bench fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=[*TARGETS, "all"])
    parser.add_argument("--engine", choices=("mutate", "atheris"), default="mutate")
    parser.add_argument("--seconds", type=float, default=60.0, help="per target (mutate engine)")
    parser.add_argument("--runs", type=int, default=10**12, help="at most this many inputs per target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crashes", type=Path, default=Path("out/fuzz-crashes"))
    args = parser.parse_args(argv)
    if args.engine == "atheris":
        if args.target == "all":
            parser.error("atheris fuzzes one target per process")
        return run_atheris(args.target, extra)
    total_runs = total_crashes = 0
    print(f"{'target':<8} {'inputs':>10} {'crashes':>8} {'inputs/s':>9}")
    for name in (TARGETS if args.target == "all" else [args.target]):
        start = time.monotonic()
        runs, crashes = run_mutate(name, args.seconds, args.runs, args.seed, args.crashes)
        rate = runs / max(time.monotonic() - start, 1e-9)
        print(f"{name:<8} {runs:>10} {crashes:>8} {rate:>9.0f}")
        total_runs += runs
        total_crashes += crashes
    print(f"{'total':<8} {total_runs:>10} {total_crashes:>8}")
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
