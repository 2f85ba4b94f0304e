"""An aiohttp service that serves arrays an arrowbridge Flight server stores, over HTTP.

``GET /items/{name}`` streams the item as an Arrow IPC stream, batch by batch as the Flight
stream delivers it (memory stays at a few batches whatever the item's size);
``GET /items/{name}/rows?start=&end=`` returns those rows as a ``.npy`` file. One
:class:`arrowbridge.aio.AsyncClient` serves every request: no thread per request, and the
event loop never waits on Flight.

Run it next to a server::

    arrowbridge serve --port 8815 &
    python examples/aiohttp_app.py grpc://127.0.0.1:8815 8080
"""

from __future__ import annotations

import io
import sys
from collections.abc import AsyncIterator

import numpy as np
import pyarrow as pa
from aiohttp import web

import arrowbridge
from arrowbridge import aio

FLIGHT = web.AppKey("flight", aio.AsyncClient)


async def item(request: web.Request) -> web.StreamResponse:
    client = request.app[FLIGHT]
    name = request.match_info["name"]
    try:
        stream = await client.stream(name, timeout=10)
    except arrowbridge.RemoteNotFoundError:
        raise web.HTTPNotFound(text=f"no item {name!r}") from None
    response = web.StreamResponse(headers={"Content-Type": "application/vnd.apache.arrow.stream"})
    await response.prepare(request)
    sink = io.BytesIO()
    writer = None
    async with stream:
        async for batch in stream:
            columns = batch if isinstance(batch, dict) else {"data": batch}
            record = pa.record_batch({k: arrowbridge.to_arrow(v) for k, v in columns.items()})
            if writer is None:
                writer = pa.ipc.new_stream(sink, record.schema)
            writer.write(record)
            await response.write(sink.getvalue())
            sink.seek(0)
            sink.truncate()
    if writer is not None:
        writer.close()
        await response.write(sink.getvalue())
    await response.write_eof()
    return response


async def rows(request: web.Request) -> web.Response:
    client = request.app[FLIGHT]
    start, end = int(request.query["start"]), int(request.query["end"])
    x = await client.get(request.match_info["name"], rows=(start, end), timeout=10)
    buffer = io.BytesIO()
    np.save(buffer, x)
    return web.Response(body=buffer.getvalue(), content_type="application/octet-stream")


def make_app(location: str) -> web.Application:
    """The service, talking to the Flight server at ``location``."""

    async def flight_client(app: web.Application) -> AsyncIterator[None]:
        async with aio.connect(location) as client:
            app[FLIGHT] = client
            yield

    app = web.Application()
    app.cleanup_ctx.append(flight_client)
    app.router.add_get("/items/{name}", item)
    app.router.add_get("/items/{name}/rows", rows)
    return app


if __name__ == "__main__":
    web.run_app(make_app(sys.argv[1]), port=int(sys.argv[2]))
