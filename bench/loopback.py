"""A loopback link between a controller core and emulated workers, without sockets.

The simulator hands message objects straight across (the default): at 100,000 requests a
second, encoding and validating every frame would cost more than the scheduling being
measured, and the core only ever sees decoded objects anyway. With `wire=True` every message
instead goes through the real codec (encode to frames, then decode and validate them), so a
message the daemons would refuse fails here too: a cheap end-to-end check of the schema on any
simulated run (`clockwork-bench sim --wire`).

Example:
    link = Link(wire=True)
    body = link.carry(schema.Result(...), msg_id=7, parent_id=3, sent_ns=now)
"""

from __future__ import annotations

from clockwork.common.codec import decode, encode
from clockwork.common.schema import Message


class Link:
    def __init__(self, wire: bool = False):
        self.wire = wire
        self.messages = 0  # carried through the codec
        self.bytes = 0  # frame bytes those messages took

    def carry(self, body: Message, msg_id: int = 0, parent_id: int = 0, sent_ns: int = 0) -> Message:
        """The message as the receiver sees it (the same object unless `wire`)."""
        if not self.wire:
            return body
        frames = encode(body, msg_id, parent_id, sent_ns)
        self.messages += 1
        self.bytes += sum(memoryview(f).nbytes for f in frames)
        return decode([bytes(f) for f in frames]).body
