"""Hand-off from lane and prepare threads to the worker's daemon loop.

Only the loop touches the ZeroMQ socket (sockets are not thread-safe), so finished work is put
on a queue, and one byte on a pipe whose read end sits in the loop's Poller wakes it at once.
"""

from __future__ import annotations

import os
import queue
from typing import Any


WAKE_READ = 4096  # bytes of wake-ups read at once


class Outbox:
    """Hand-off from any thread to the daemon loop: a queue, and a pipe the Poller watches."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._closed = False

    def fileno(self) -> int:
        return self._read_fd

    def put(self, item: Any) -> None:
        self._queue.put(item)
        self.wake()

    def wake(self) -> None:
        if self._closed:
            return  # a straggling thread after shutdown: nobody is listening
        try:
            os.write(self._write_fd, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: the loop is awake already and drains the queue

    def drain(self) -> list:
        try:
            while len(os.read(self._read_fd, WAKE_READ)) == WAKE_READ:
                pass  # a short read emptied the pipe: no second call to find it empty
        except BlockingIOError:
            pass
        items = []
        get, empty = self._queue.get_nowait, self._queue.empty
        while not empty():  # only this thread takes from the queue
            items.append(get())
        return items

    def close(self) -> None:
        self._closed = True
        os.close(self._read_fd)
        os.close(self._write_fd)
