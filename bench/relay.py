"""The floor: a bare byte relay in front of the fake model, `python -m bench.relay --port P --upstream URL`.

It forwards each request as it came (method, path, body, content type) to the upstream and
copies the response's bytes back as they arrive: no parsing, no history, no state beyond one
keep-alive connection pool. The load generator drives it as it drives the model directly, so
its cost per chunk and per turn is what any Python relay on this machine pays at least (aiohttp
with its C HTTP parser, on uvloop); the service's cost is read against it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from bench.limits import raise_open_files

UPSTREAM = web.AppKey("upstream", str)
CLIENT = web.AppKey("client", aiohttp.ClientSession)


async def _client(app: web.Application) -> AsyncIterator[None]:
    # No connection limit (1,000 streams may be open at once), bytes as they come (no decompression).
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout()) as s:
        app[CLIENT] = s
        yield


async def relay(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    url = request.app[UPSTREAM] + request.rel_url.path_qs
    async with request.app[CLIENT].request(request.method, url, data=body, headers=headers) as upstream:
        response = web.StreamResponse(status=upstream.status)
        response.content_type = upstream.content_type
        await response.prepare(request)
        # A client that leaves mid-stream ends the copy (and the upstream request) quietly.
        with contextlib.suppress(ConnectionResetError):
            async for data in upstream.content.iter_any():
                await response.write(data)
            await response.write_eof()
    return response


def app(upstream: str) -> web.Application:
    application = web.Application()
    application[UPSTREAM] = upstream.rstrip("/")
    application.cleanup_ctx.append(_client)
    application.router.add_route("*", "/{path:.*}", relay)
    return application


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the model's base URL, e.g. http://127.0.0.1:8001")
    args = parser.parse_args()
    raise_open_files()
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    web.run_app(
        app(args.upstream), host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=4096, loop=loop
    )


if __name__ == "__main__":
    main()
