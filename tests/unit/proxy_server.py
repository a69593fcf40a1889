"""The proxy app served by a real uvicorn with the HTTP options ``chimera-orch up`` uses, in
its own process (``python -m tests.unit.proxy_server PORT_FILE``), in front of the fake
engine: for tests that need a process of its own (a descriptor limit). It raises its
descriptor limit as ``serve`` does, writes its port to PORT_FILE once it listens and serves
until killed. Header timeout: CHIMERA_HEADER_TIMEOUT_S, as in ``up``."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import uvicorn

from orchestrator.env import Env
from orchestrator.metrics import ChimeraMetrics
from orchestrator.proxy import create_app
from orchestrator.proxy.connections import raise_nofile
from orchestrator.proxy.limits import RequestLimits, uvicorn_http_options
from tests.unit.proxy_fakes import FakeRouter
from tests.unit.test_proxy import LLAMA, QWEN, FakeEngine, engine_transport


async def main(port_file: Path) -> None:
    env = Env.read()
    raise_nofile()
    app = create_app(FakeRouter((LLAMA, QWEN)), ChimeraMetrics(), transport=engine_transport(FakeEngine()))
    limits = RequestLimits(header_timeout_s=env.header_timeout_s, max_connections=env.max_connections)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", **uvicorn_http_options(limits))
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn offers no event for it)
        await asyncio.sleep(0.01)
    port_file.write_text(str(server.servers[0].sockets[0].getsockname()[1]))  # noqa: ASYNC240 (a few bytes, once)
    await task


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
