"""Client authentication (optional, off by default): API keys, each with an allow-list of
models and an optional request rate.

Keys come from a file (``CHIMERA_API_KEYS_FILE``, or ``auth.api_keys_file`` in the placements
file) and/or ``CHIMERA_API_KEYS`` (comma-separated keys that may use every model, unlimited):

    keys:
      - name: team-a            # what logs say: never the key itself
        key: "sk-..."
        models: [llama3, qwen]  # canonical names (aliases follow); omitted: every model
        rate_per_s: 5           # optional: a token bucket (policy/bucket.py)
        burst: 10               # optional: default max(1, rate_per_s)

With keys configured, ``/v1/*`` and ``/generate`` need ``Authorization: Bearer <key>`` (the
scheme is matched case-insensitively and is required): 401 ``invalid_api_key`` when it is
missing or unknown, 429 ``rate_limit_exceeded`` with Retry-After over the key's rate, 403
``model_not_allowed`` for a model off its list (forward.py, after the name is resolved).
``/v1/models`` lists only the key's models. Only SHA-256 digests of the keys are kept.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.config import Config
from orchestrator.env import Env
from orchestrator.errors import ConfigError
from orchestrator.policy.bucket import Bucket, Rate, full, take
from orchestrator.proxy.errors import ProxyError
from orchestrator.sglang.api import GENERATE

log = logging.getLogger("chimera.proxy")

SCOPE_KEY = "chimera.client"  # the authenticated ClientKey, in the ASGI scope


@dataclass(frozen=True)
class ClientKey:
    name: str
    digest: bytes  # SHA-256 of the key
    models: frozenset[str] | None  # None: every model
    rate: Rate | None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


def bearer(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The credentials of ``Authorization: Bearer <credentials>`` (scheme case-insensitive),
    or None: no header, another scheme, or no scheme at all."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
            return None
    return None


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ClientKeys:
    """The key table and each key's bucket. ``clock``: monotonic seconds (tests pass theirs)."""

    def __init__(self, keys: Iterable[ClientKey], clock: Callable[[], float] = time.monotonic) -> None:
        self.by_digest = {k.digest: k for k in keys}
        self.clock = clock
        self._buckets: dict[bytes, Bucket] = {}

    def __len__(self) -> int:
        return len(self.by_digest)

    def authenticate(self, headers: Iterable[tuple[bytes, bytes]]) -> ClientKey:
        """The caller's key; raises ProxyError 401 or 429."""
        given = bearer(headers)
        key = self.by_digest.get(digest(given)) if given is not None else None
        if key is None:
            raise ProxyError(
                401,
                "a valid API key is required: `Authorization: Bearer <key>`",
                code="invalid_api_key",
            )
        if key.rate is not None:
            now = self.clock()
            bucket, wait_s = take(self._buckets.get(key.digest) or full(key.rate, now), key.rate, now)
            self._buckets[key.digest] = bucket
            if wait_s > 0:
                retry = max(1, math.ceil(wait_s))
                raise ProxyError(
                    429,
                    f"the request rate of this API key ({key.rate.per_s:g}/s, burst {key.rate.burst:g}) is used up; "
                    f"retry in {retry} s",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(retry)},
                )
        return key


def forbidden(model: str) -> ProxyError:
    return ProxyError(403, f"this API key may not use the model {model!r}", code="model_not_allowed", param="model")


def protected(path: str) -> bool:
    """The routes a key guards: the OpenAI API and SGLang's /generate."""
    return path.startswith("/v1/") or path == GENERATE.path


class AuthMiddleware:
    """ASGI middleware: authenticates the protected routes and puts the key in the scope."""

    def __init__(self, app: ASGIApp, keys: ClientKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and protected(scope["path"]):
            try:
                scope[SCOPE_KEY] = self.keys.authenticate(scope.get("headers", ()))
            except ProxyError as err:
                log.info("refused %s %s: %s", scope["method"], scope["path"], err.code)
                await err.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def client_of(scope: Scope) -> ClientKey | None:
    key = scope.get(SCOPE_KEY)
    return key if isinstance(key, ClientKey) else None


# -- loading ---------------------------------------------------------------------------------


def deployment_keys(cfg: Config, env: Env) -> ClientKeys | None:
    """The client keys of a deployment: the file the environment names, else the placements
    file's ``auth.api_keys_file`` (relative to it), plus CHIMERA_API_KEYS. Every proxy process
    reads them the same way (cli/main.py, dataplane/worker.py)."""
    path = Path(env.api_keys_file).expanduser() if env.api_keys_file else None
    if path is None and cfg.api_keys_file:  # relative to the placements file
        path = Path(cfg.source).parent / Path(cfg.api_keys_file).expanduser()
    return load_keys(path, env.api_keys, [m.name for m in cfg.models])


def load_keys(path: Path | None, inline: str | None, models: Iterable[str]) -> ClientKeys | None:
    """The keys of ``path`` (a YAML or JSON file) and of ``inline`` (CHIMERA_API_KEYS);
    None when neither gives one (authentication off). Raises ConfigError, naming the entry
    (never the key), for an unreadable file, a malformed entry, a duplicate key or a model
    that is not in the placements file."""
    known = set(models)
    problems: list[str] = []
    keys: list[ClientKey] = []
    if path is not None:
        keys += _file_keys(path, known, problems)
    for i, key in enumerate(k.strip() for k in (inline or "").split(",") if k.strip()):
        keys.append(ClientKey(f"CHIMERA_API_KEYS[{i}]", digest(key), None, None))
    seen: dict[bytes, str] = {}
    for k in keys:
        if k.digest in seen:
            problems.append(f"api keys: {k.name} has the same key as {seen[k.digest]}")
        seen[k.digest] = k.name
    if problems:
        raise ConfigError(problems)
    return ClientKeys(keys) if keys else None


def _file_keys(path: Path, known: set[str], problems: list[str]) -> list[ClientKey]:
    where = f"api keys file {path}"
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        problems.append(f"{where}: cannot be read: {type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}")
        return []
    entries = raw.get("keys") if isinstance(raw, Mapping) else None
    if not isinstance(entries, list):
        problems.append(f"{where}: must be a mapping with a list `keys:`")
        return []
    out = []
    for i, entry in enumerate(entries):
        key = _entry(entry, f"{where}: keys[{i}]", known, problems)
        if key is not None:
            out.append(key)
    return out


def _entry(entry: Any, where: str, known: set[str], problems: list[str]) -> ClientKey | None:
    if not isinstance(entry, Mapping):
        problems.append(f"{where}: must be a mapping with `name` and `key`")
        return None
    unknown = set(entry) - {"name", "key", "models", "rate_per_s", "burst"}
    if unknown:
        problems.append(f"{where}: unknown field(s) {sorted(unknown)}")
    name, key, models = entry.get("name"), entry.get("key"), entry.get("models")
    if not isinstance(name, str) or not name.strip():
        problems.append(f"{where}.name: a non-empty string is required")
        return None
    where = f"{where} ({name})"
    if not isinstance(key, str) or len(key.strip()) < 8:
        problems.append(f"{where}.key: a string of at least 8 characters is required")
        return None
    allowed: frozenset[str] | None = None
    if models is not None:
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            problems.append(f"{where}.models: a list of model names is required")
            return None
        missing = sorted(set(models) - known)
        if missing:
            problems.append(f"{where}.models: not in the placements file: {', '.join(missing)}")
        allowed = frozenset(models)
    rate: Rate | None = None
    per_s, burst = entry.get("rate_per_s"), entry.get("burst")
    if per_s is not None or burst is not None:
        try:
            per = float(per_s)  # type: ignore[arg-type]
            rate = Rate(per, float(burst) if burst is not None else max(1.0, per))
        except (TypeError, ValueError):
            problems.append(f"{where}: rate_per_s must be a number > 0 and burst a number >= 1")
            return None
    return ClientKey(name, digest(key.strip()), allowed, rate)
