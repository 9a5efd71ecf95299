"""A minimal pass-through forwarding with one ``httpx.AsyncClient``, for comparison only.

Why it exists: ``purgeproxy/passthrough.py`` uses aiohttp's client because httpx's pool was
measured far slower under concurrency. This is the smallest honest httpx equivalent (same server
framework, same pool size as purgeproxy's default, streamed bodies both ways), so that the claim
is re-measured in every benchmark run rather than carried as folklore.

Run: ``python -m bench.httpx_passthrough --port 9200 --upstream http://127.0.0.1:9000``.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import httpx
from aiohttp import web

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer",
                         "upgrade", "host", "proxy-connection"})
CLIENT = web.AppKey("client", httpx.AsyncClient)
UPSTREAM = web.AppKey("upstream", str)


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(64 * 1024):
        yield chunk


async def forward(request: web.Request) -> web.StreamResponse:
    """Stream the request to the upstream and the answer back, dropping hop-by-hop headers."""
    client = request.app[CLIENT]
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
    upstream_request = client.build_request(
        request.method,
        request.app[UPSTREAM] + request.raw_path,
        headers=headers,
        content=_body(request) if request.body_exists else None,
    )
    upstream = await client.send(upstream_request, stream=True)
    try:
        response = web.StreamResponse(status=upstream.status_code)
        for key, value in upstream.headers.multi_items():
            if key.lower() not in _HOP_BY_HOP:
                response.headers.add(key, value)
        await response.prepare(request)
        async for chunk in upstream.aiter_raw(64 * 1024):
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        await upstream.aclose()


def create_app(upstream: str, max_connections: int) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")

    async def client_ctx(app: web.Application) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=max_connections,
                              max_keepalive_connections=max_connections)
        app[CLIENT] = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120.0, connect=5.0))
        yield
        await app[CLIENT].aclose()

    app.cleanup_ctx.append(client_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="origin only, e.g. http://127.0.0.1:9000")
    parser.add_argument("--max-connections", type=int, default=200)
    args = parser.parse_args(argv)
    web.run_app(create_app(args.upstream, args.max_connections), host=args.host, port=args.port,
                access_log=None, print=None)


if __name__ == "__main__":
    main()
