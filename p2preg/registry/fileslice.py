"""Serve a byte range of a committed file: ``loop.sendfile`` when the loop has it, else chunks.

Owns: ``send_file_slice`` and ``send_chunks``. The caller opens the file *before* any header is
sent, so a file that vanished is still an ordinary error response; once headers are out, a failure
propagates and the connection is dropped (a client never sees a short "complete" response).
uvloop has no ``loop.sendfile``: there the bytes go through worker-thread reads of
``CHUNK_BYTES``. Must not import storage or handlers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import BinaryIO

from aiohttp import web

CHUNK_BYTES = 1 << 20


async def send_file_slice(
    request: web.Request,
    response: web.StreamResponse,
    fobj: BinaryIO,
    offset: int,
    count: int,
) -> web.StreamResponse:
    """Prepare ``response``, send ``count`` bytes of ``fobj`` from ``offset``, close ``fobj``."""
    try:
        response.content_length = count
        writer = await response.prepare(request)
        if request.method == "HEAD" or count == 0 or writer is None:
            await response.write_eof()
            return response
        loop = asyncio.get_running_loop()
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        try:
            await writer.drain()
            await loop.sendfile(transport, fobj, offset, count)
        except NotImplementedError:
            await _copy_chunks(response, fobj, offset, count)
        await response.write_eof()
        return response
    finally:
        fobj.close()


async def _copy_chunks(
    response: web.StreamResponse, fobj: BinaryIO, offset: int, count: int
) -> None:
    def read(size: int, position: int | None) -> bytes:
        if position is not None:
            fobj.seek(position)
        return fobj.read(size)

    position: int | None = offset
    while count > 0:
        chunk = await asyncio.to_thread(read, min(CHUNK_BYTES, count), position)
        position = None
        if not chunk:
            raise ConnectionAbortedError("file shorter than its recorded size")
        await response.write(chunk)
        count -= len(chunk)


async def send_chunks(
    request: web.Request,
    response: web.StreamResponse,
    chunks: AsyncIterator[bytes],
    count: int,
) -> web.StreamResponse:
    """Prepare ``response`` and stream exactly ``count`` bytes from ``chunks``.

    A source that yields more or fewer bytes than promised, or raises, aborts the connection;
    ``chunks`` is closed (``aclose``) in every case, also when the client goes away.
    """
    try:
        response.content_length = count
        await response.prepare(request)
        sent = 0
        async for chunk in chunks:
            sent += len(chunk)
            if sent > count:
                raise ConnectionAbortedError("content source sent more bytes than promised")
            await response.write(chunk)
        if sent != count:
            raise ConnectionAbortedError("content source ended early")
        await response.write_eof()
        return response
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
