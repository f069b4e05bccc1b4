"""A request body handed from the event loop to a worker thread as a blocking stream.

The loop reads the body and hands it over in pieces of about 1 MiB through a small bounded
queue; the worker reads it as a file. Memory holds at most `max_chunks` pieces, whatever the
body's size, and the body never touches the disk as a whole.
"""

from __future__ import annotations

import asyncio
import functools
import queue
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from gateway.errors import GatewayError

T = TypeVar("T")
_END = b""
_POLL_S = 0.05
HAND_OVER_BYTES = 1 << 20


class BodyTooLarge(GatewayError):
    pass


class BodyStream:
    """The worker side: `read(n)` blocks until the loop supplied the bytes or the body ended."""

    def __init__(self, max_chunks: int = 8) -> None:
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=max_chunks)
        self._buffer = b""
        self._ended = False

    def read(self, size: int = -1) -> bytes:
        while not self._ended and (size < 0 or len(self._buffer) < size):
            chunk = self._queue.get()
            if chunk is _END:
                self._ended = True
            else:
                self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    def put(self, chunk: bytes, *, worker_done: Callable[[], bool]) -> bool:
        """Called from the loop's executor; False once the worker stopped reading."""
        while True:
            if worker_done():
                return False
            try:
                self._queue.put(chunk, timeout=_POLL_S)
                return True
            except queue.Full:
                continue


async def feed_worker(
    chunks: AsyncIterator[bytes],
    stream: BodyStream,
    worker: asyncio.Future[T],
    *,
    max_bytes: int,
) -> T:
    """Feed `chunks` to `stream` while `worker` reads it; refuse bodies above `max_bytes`.

    If the worker stops early (a refused pack), the rest of the body is read and dropped, up to
    `max_bytes`, so the publisher gets the reply instead of a broken connection. However the
    body ends (complete, too large, or the publisher gone), the worker sees its end.
    """
    loop = asyncio.get_running_loop()
    received = 0
    feeding = True
    batch: list[bytes] = []
    batched = 0

    async def hand_over() -> bool:
        nonlocal batch, batched
        data, batch, batched = b"".join(batch), [], 0
        put = functools.partial(stream.put, data, worker_done=worker.done)
        return await loop.run_in_executor(None, put)

    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > max_bytes:
                raise BodyTooLarge(
                    f"payload larger than the gateway's limit of {max_bytes} bytes "
                    "(gateway.max_payload_bytes): publish it in smaller packs"
                )
            if feeding and chunk:
                # uvicorn hands over ~64 KiB at a time; one thread hop per MiB, not per chunk
                batch.append(chunk)
                batched += len(chunk)
                if batched >= HAND_OVER_BYTES:
                    feeding = await hand_over()
        if feeding and batch:
            feeding = await hand_over()
    finally:
        if feeding:
            end = functools.partial(stream.put, _END, worker_done=worker.done)
            await loop.run_in_executor(None, end)
    return await worker
