"""The endpoint handler behind a local HTTP server, as the Inference Endpoints toolkit runs it:
``POST /`` with ``{"inputs": …, "parameters": {…}}`` answers the handler's JSON.

For trying a handler before deploying it, and for the tests. Requests run one at a time: the
handler seeds torch's global RNG, so two at once would draw from each other's stream.
Binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiohttp import web

from servecheck.reference.model import resolve
from servecheck.servers.endpoint.handler import EndpointHandler

REQUIREMENTS = Path(__file__).with_name("requirements.txt")


def app(model: str) -> web.Application:
    handler = EndpointHandler(str(resolve(model)))
    lock = asyncio.Lock()

    async def predict(request: web.Request) -> web.Response:
        try:
            data = await request.json()
        except json.JSONDecodeError as e:
            return web.json_response({"error": f"body is not JSON: {e}"}, status=400)
        if not isinstance(data, dict):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        async with lock:
            try:
                result = await asyncio.to_thread(handler, data)
            except (ValueError, TypeError) as e:
                return web.json_response({"error": str(e)}, status=400)
        return web.json_response(result)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    application = web.Application()
    application.router.add_post("/", predict)
    application.router.add_get("/health", health)
    return application


def serve(model: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    web.run_app(app(model), host=host, port=port, print=None)


def write_files(model: str, out: Path) -> list[Path]:
    """handler.py and requirements.txt for an endpoint repository, next to the checkpoint."""
    out.mkdir(parents=True, exist_ok=True)
    handler = out / "handler.py"
    handler.write_text(Path(__file__).with_name("handler.py").read_text())
    requirements = out / "requirements.txt"
    requirements.write_text(REQUIREMENTS.read_text())
    resolve(model)  # a clear error now, not at deploy time, when the checkpoint is not one
    return [handler, requirements]
