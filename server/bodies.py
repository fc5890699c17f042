"""Request bodies a handler did not read (refused early: 413, 401, 400): answered, then dropped.

Left alone, aiohttp "lingers" after the handler, reading the rest for up to 10 s where neither
the client going away nor a shutdown can end it, so stopping the server waited for it. Instead
the middleware sends the answer at once with `Connection: close`, then reads and discards the
rest inside the request, for at most LINGER_S: a client that disconnects, or the server
beginning to stop (`stop()`, on shutdown), ends that wait at once. Reading the rest before the
close keeps the kernel from resetting the connection under a client still sending its body,
which could destroy the answer before the client reads it.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from server.handlers.request import Handler

LINGER_S = 10.0


class UnreadBodies:
    def __init__(self) -> None:
        self._waits: set[asyncio.Timeout] = set()
        self._stopping = False

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if response.prepared or request.content.is_eof():
            return response
        response.force_close()
        try:
            await response.prepare(request)
            await response.write_eof()
            await self._discard_rest(request)
        except OSError:  # the client went away: nothing left to answer or to read
            pass
        if not request.content.is_eof():
            request.protocol.force_close()  # or aiohttp would linger on the rest itself
        return response

    async def _discard_rest(self, request: web.Request) -> None:
        try:
            async with asyncio.timeout(0 if self._stopping else LINGER_S) as wait:
                self._waits.add(wait)
                try:
                    while await request.content.readany():
                        pass
                finally:
                    self._waits.discard(wait)
        except TimeoutError:
            pass

    def stop(self) -> None:
        """The server is stopping: end every wait for the rest of a body now."""
        self._stopping = True
        now = asyncio.get_running_loop().time()
        for wait in self._waits:
            wait.reschedule(now)
