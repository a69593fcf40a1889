"""The API key every engine is started with, so that only chimera can drive it.

What stock SGLang 0.5.17 does with ``--api-key`` (srt/utils/auth.py ``decide_request_auth``,
installed by srt/entrypoints/http_server.py as an ASGI middleware in single-tokenizer mode):

- every route needs ``Authorization: Bearer <key>`` (the scheme compared case-insensitively,
  the header split at its first space, the key compared in constant time), the OpenAI routes,
  ``/generate``, ``/model_info``, ``/v1/loads`` and the admin routes (``/pause_generation``,
  ``/release_memory_occupation``...) alike, unknown paths included;
- except ``OPTIONS`` requests and paths starting with ``/health`` or ``/metrics`` (kept open for
  liveness probes and Prometheus);
- a refused request gets ``401 {"error": "Unauthorized"}``.

How the key reaches the engine: SGLang reads it from argv only, but ``prepare_server_args``
merges a ``--config FILE.yaml`` into argv inside the process (srt/server_args_config_parser.py),
so chimera writes the key to a 0600 YAML file in the run folder and passes ``--config FILE``:
the key never shows in ``ps`` or ``/proc/<pid>/cmdline``. SGLang still logs its
``server_args`` (key included) into the engine's own log at start; the run folder is made
0700 for that reason. chimera itself never logs the key (``EngineAuth`` hides it from repr).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.engines.base import CONFIG_FLAG

__all__ = ["CONFIG_FLAG", "EngineAuth", "new_key", "write_config"]

CONFIG_NAME = "engine-auth.yaml"  # in the run folder, mode 0600


def new_key() -> str:
    """A fresh key: hex only, so no YAML or argparse reading can turn it into a number or a
    flag (a key starting with ``-`` would be read by argparse as the next flag)."""
    return "ck-" + secrets.token_hex(32)


@dataclass(frozen=True)
class EngineAuth:
    """The key of this deployment's engines and the ``--config`` file that hands it over."""

    key: str = field(repr=False)
    config_file: Path

    def headers(self) -> dict[str, str]:
        """The header every chimera→engine request carries."""
        return {"Authorization": f"Bearer {self.key}"}


def write_config(run_dir: Path, key: str) -> EngineAuth:
    """Write the key to ``run_dir/engine-auth.yaml`` (0600; the run folder 0700), created
    with those modes so that no other user can read it even for an instant."""
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(run_dir, 0o700)
    path = run_dir / CONFIG_NAME
    tmp = path.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"api-key: {json.dumps(key)}\n")  # a JSON string is a YAML string
    os.replace(tmp, path)
    return EngineAuth(key, path)
