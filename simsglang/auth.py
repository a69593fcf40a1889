"""``--api-key`` and ``--config`` as stock SGLang 0.5.17 applies them.

The key (srt/utils/auth.py ``decide_request_auth`` with an ``api_key`` and no admin key): an ASGI
middleware in front of every route. ``OPTIONS`` and paths starting with ``/health`` or
``/metrics`` pass; every other request, unknown paths included, needs ``Authorization: Bearer
<key>`` (the header split at its first space, the scheme compared case-insensitively, the key in
constant time), else ``401 {"error":"Unauthorized"}`` (compact JSON, as ORJSONResponse writes it).
``--admin-api-key`` is not simulated (chimera never sets it).

The config file (srt/server_args_config_parser.py ``ConfigArgumentMerger``): one ``--config
FILE`` (``.yaml``/``.yml``, a mapping at its root), each ``key: value`` becoming ``--key value``
(``true`` becomes the bare flag, ``false`` drops it; a list its items), placed before the rest
of argv so that flags given on the command line win.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from starlette.types import ASGIApp, Receive, Scope, Send

UNAUTHORIZED = b'{"error":"Unauthorized"}'
OPEN_PREFIXES = ("/health", "/metrics")


def allowed(method: str, path: str, authorization: str | None, api_key: str) -> bool:
    """SGLang's decision for a NORMAL route with only ``--api-key`` set."""
    if method == "OPTIONS" or path.startswith(OPEN_PREFIXES):
        return True
    if not authorization:
        return False
    parts = authorization.split(" ", 1)
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return False
    return secrets.compare_digest(parts[1], api_key)


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authz = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        if allowed(scope["method"], scope["path"], authz, self.api_key):
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(UNAUTHORIZED))],
            }
        )
        await send({"type": "http.response.body", "body": UNAUTHORIZED})


def merge_config(argv: Sequence[str]) -> list[str]:
    """argv with its ``--config FILE`` replaced by the file's flags, in front. Raises
    ValueError with SGLang's wording for what SGLang refuses."""
    args = list(argv)
    at = [i for i, a in enumerate(args) if a == "--config"]
    if not at:
        return args
    if len(at) > 1:
        raise ValueError("Multiple config files specified! Only one allowed.")
    i = at[0]
    if i == len(args) - 1:
        raise ValueError("No config file specified after --config flag!")
    path = Path(args[i + 1])
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"Config file must be YAML format, got: {path.suffix}")
    if not path.exists():
        raise ValueError(f"Config file not found: {path}")
    data: Any = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError("Config file must contain a dictionary at root level")
    merged: list[str] = []
    for key, value in data.items():
        if isinstance(value, bool):
            if value:
                merged.append(f"--{key}")
        elif isinstance(value, list):
            if value:
                merged += [f"--{key}", *(str(v) for v in value)]
        else:
            merged += [f"--{key}", str(value)]
    return merged + args[:i] + args[i + 2 :]
