"""`clockwork-bench transport`: real echo processes over raw TCP and ZeroMQ, round trips timed."""

import json

import pytest

from clockwork.bench import transport


def test_every_transport_size_and_mode_is_timed_against_raw_tcp(tmp_path):
    out = tmp_path / "out"
    assert transport.main(["--sizes", "100,100000", "--round-trips", "6", "--warmup", "2", "--block", "3",
                           "--gap-ms", "1", "--out", str(out)]) == 0
    summary = json.loads((out / "transport.json").read_text())
    seen = {(r["size_bytes"], r["mode"], r["transport"]) for r in summary["results"]}
    assert seen == {(size, mode, name) for size in (100, 100000) for mode in ("back to back", "1 ms gaps")
                    for name in transport.TRANSPORTS}
    assert all(0 < r["p50"] <= r["max"] for r in summary["results"])
    verdicts = summary["over_raw_tcp"]
    assert len(verdicts) == 8 and {v["transport"] for v in verdicts} == {"zeromq tcp", "zeromq ipc"}
    for v in verdicts:
        assert v["ratio_p50"] == pytest.approx(v["p50_ms"] / v["raw_p50_ms"])


def test_no_gap_measures_back_to_back_only(tmp_path):
    out = tmp_path / "out"
    assert transport.main(["--sizes", "64", "--round-trips", "3", "--warmup", "1", "--gap-ms", "0",
                           "--out", str(out)]) == 0
    summary = json.loads((out / "transport.json").read_text())
    assert {r["mode"] for r in summary["results"]} == {"back to back"}


@pytest.mark.parametrize("argv", [["--sizes", "100,x"], ["--sizes", "4"], ["--round-trips", "0"], ["--gap-ms", "-1"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        transport.parse_args(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_a_message_larger_than_the_socket_buffer_arrives_whole_and_in_order():
    import socket
    import threading

    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.settimeout(10)  # as RawPath's connection: a timed sendmsg takes what the buffer holds, in pieces
    body = bytes(range(256)) * 4096  # 1 MiB
    got = {}

    def read() -> None:
        buf = transport.Buffer()
        head = buf.read(theirs, transport.HEADER.size)
        got["body"] = bytes(buf.read(theirs, transport.HEADER.unpack(head)[0], transport.HEADER.size))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        transport.send_message(ours, transport.HEADER.pack(len(body)), memoryview(body)[:10], memoryview(body)[10:])
        reader.join(10)
    finally:
        ours.close()
        theirs.close()
    assert got["body"] == body
