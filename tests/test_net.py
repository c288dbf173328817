"""common.net.waiting: how the daemons drain a socket, on real ZeroMQ sockets."""

import zmq

from clockwork.common.net import recv_frames, waiting


def _pair():
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://waiting-test")
    b.connect("inproc://waiting-test")
    return ctx, a, b


def test_it_takes_what_waits_up_to_the_limit_and_stops_when_nothing_does():
    ctx, a, b = _pair()
    try:
        for i in range(3):
            a.send_multipart([b"m%d" % i, b"tail"])
        assert b.poll(1000)
        first = [[bytes(f) for f in frames] for frames in waiting(b, 2)]
        assert first == [[b"m0", b"tail"], [b"m1", b"tail"]]  # the limit, whole messages
        assert [bytes(frames[0]) for frames in waiting(b, 10)] == [b"m2"]  # then what is left, and no more
        assert list(waiting(b, 10)) == []  # a drain without a poll before it finds nothing, quietly
        a.send(b"again")
        assert b.poll(1000)
        read = lambda sock, flags: (recv_frames(sock, flags), "who")  # noqa: E731 - a reader that adds a field
        assert [(bytes(frames[0]), who) for frames, who in waiting(b, 10, read)] == [(b"again", "who")]
    finally:
        a.close(0)
        b.close(0)
        ctx.term()
