"""The admin API: list instances, park or wake one. Never on the public routes' terms: every
call needs ``Authorization: Bearer <admin key>`` (the scheme required, in any case; the key
compared in constant time); with no key
configured the routes answer 403 and say how to set one."""

from __future__ import annotations

import dataclasses
import hmac
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from orchestrator.proxy.auth import bearer
from orchestrator.proxy.errors import ProxyError
from orchestrator.types import InstanceView


class Admin(Protocol):
    def instances(self) -> list[InstanceView]: ...

    async def admin(self, instance_id: str, action: str) -> str: ...


def admin_routes(control: Admin, key: str | None) -> list[Route]:
    def authorized(request: Request) -> None:
        if not key:
            raise ProxyError(
                403,
                "the admin API is off: start chimera-orch with CHIMERA_ADMIN_KEY or CHIMERA_ADMIN_KEY_FILE set",
                code="admin_disabled",
            )
        given = bearer(request.scope["headers"]) or ""  # the scheme is required
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise ProxyError(
                401,
                "admin API: missing or wrong `Authorization: Bearer <key>`",
                code="invalid_admin_key",
            )

    async def list_instances(request: Request) -> Response:
        try:
            authorized(request)
        except ProxyError as e:
            return e.response()
        return _json({"instances": [_view(v) for v in control.instances()]})

    def action(name: str) -> Any:
        async def run(request: Request) -> Response:
            try:
                authorized(request)
                iid = request.path_params["instance"]
                try:
                    report = await control.admin(iid, name)
                except KeyError as exc:
                    raise ProxyError(404, str(exc.args[0]), code="instance_not_found") from exc
                except ValueError as exc:
                    raise ProxyError(409, str(exc), code="invalid_state") from exc
            except ProxyError as e:
                return e.response()
            view = next((v for v in control.instances() if v.id == iid), None)
            return _json({"result": report, "instance": _view(view) if view else None})

        return run

    return [
        Route("/admin/instances", list_instances, methods=["GET"]),
        Route("/admin/instances/{instance}/park", action("park"), methods=["POST"]),
        Route("/admin/instances/{instance}/wake", action("wake"), methods=["POST"]),
    ]


def _view(v: InstanceView) -> dict[str, Any]:
    d = dataclasses.asdict(v)
    d["state"] = v.state.value
    return d


def _json(obj: Any) -> Response:
    return Response(orjson.dumps(obj), media_type="application/json")
