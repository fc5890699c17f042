"""Request bodies: a body that stops coming is refused; one a handler did not read is dropped.

Stalled bodies (`stalled_bodies`, a middleware): while a handler runs and its request's body has
not all arrived, a body that receives no byte for `config.body_idle_s` (BODY_IDLE_S in
server/limits.py, nginx's client_body_timeout) ends the handler: the answer is 40000 naming the
wait, the connection is closed, and what the handler had received is dropped as for any refused
request (an upload's temp file is deleted). A body already whole when the handler starts (a
check-in, nearly always) costs nothing more. Together with the head timeout of server.listener
this bounds how long one slow client holds a request: a connection that trickles a byte now and
then is still bounded by the connection cap, not by this.

Unread bodies (`UnreadBodies`), refused early: 413, 401, 400: answered, then dropped.

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

from server.context import services_of
from server.errors import MalformedRequest
from server.handlers.request import Handler

LINGER_S = 10.0


@web.middleware
async def stalled_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    body = request.content
    if not request.body_exists or body.is_eof():
        return await handler(request)
    idle = services_of(request).config.body_idle_s
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    seen = body.total_bytes
    stalled = False
    timers: list[asyncio.TimerHandle] = []

    def check() -> None:
        nonlocal seen, stalled
        if body.is_eof():
            return
        if body.total_bytes == seen:
            stalled = True
            task.cancel()
            return
        seen = body.total_bytes
        timers[0] = loop.call_later(idle, check)

    timers.append(loop.call_later(idle, check))
    try:
        return await handler(request)
    except asyncio.CancelledError:
        if stalled and task.uncancel() == 0:
            raise MalformedRequest(
                f"body: no byte of it arrived for {idle:g} s; a request body must keep coming"
            ) from None
        raise
    finally:
        timers[0].cancel()


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
