"""A stand-in on loopback for the few Vercel API calls the CLI makes, so the real CLI runs offline.

``vercel deploy --api <this> --token <any>`` asks who the user is, which team and project the link
names, then posts the deployment: the body lists every file the CLI would upload (after
``.vercelignore``), with its digest. The stand-in records that body and answers "ready", which is
all a test needs to see what a remote build would be given. ``vercel dev`` asks for the same user,
team and project, and for the project's environment variables, which the stand-in serves from
``env``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from dev.vercel_cli import PROJECT_JSON

TEAM = {"id": PROJECT_JSON["orgId"], "slug": "local", "name": "Local"}
PROJECT_NAME = "streaming-function"


@dataclass
class VercelApi:
    """What the CLI asked, and every deployment it posted."""

    env: dict[str, str] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    deployments: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def uploaded(self) -> list[str]:
        """The files of the last deployment, sorted: what a remote build is given."""
        return sorted(f["file"] for f in self.deployments[-1]["files"])

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path}")
        path = request.path
        if path.startswith("/v2/user"):
            return web.json_response(
                {"user": {"id": "user_local", "username": "local", "email": "dev@example.test"}}
            )
        if path == "/v1/teams":
            return web.json_response({"teams": [TEAM], "pagination": {"count": 1}})
        if path.startswith("/teams/"):
            return web.json_response(TEAM)
        if path.startswith("/v3/env/pull/"):
            return web.json_response({"env": self.env})
        if path.endswith("/env"):
            return web.json_response({"envs": self._envs()})
        if path.startswith(("/v9/projects/", "/v10/projects/")):
            return web.json_response(self._project())
        if path.startswith("/v13/deployments") and request.method == "POST":
            self.deployments.append(json.loads(await request.read()))
            return web.json_response(self._deployment())
        if path.startswith(("/v13/deployments/", "/v3/now/deployments/")):
            return web.json_response(self._deployment())
        return web.json_response({"error": {"code": "not_found", "message": path}}, status=404)

    def _project(self) -> dict[str, Any]:
        return {
            "id": PROJECT_JSON["projectId"],
            "name": PROJECT_NAME,
            "accountId": TEAM["id"],
            "framework": None,
            "env": self._envs(),
            "targets": {},
            "latestDeployments": [],
        }

    def _envs(self) -> list[dict[str, Any]]:
        return [
            {"key": k, "value": v, "type": "plain", "target": ["development"], "id": f"env_{k}"}
            for k, v in self.env.items()
        ]

    def _deployment(self) -> dict[str, Any]:
        return {
            "id": "dpl_local",
            "url": "streaming-function.local",
            "name": PROJECT_NAME,
            "readyState": "READY",
            "status": "READY",
            "aliasAssigned": True,
            "alias": [],
            "ownerId": TEAM["id"],
            "projectId": PROJECT_JSON["projectId"],
            "createdAt": 1,
            "inspectorUrl": "http://127.0.0.1/inspect",
            "target": None,
            "version": 2,
        }


@asynccontextmanager
async def vercel_api(env: dict[str, str] | None = None) -> AsyncIterator[VercelApi]:
    """Serve a ``VercelApi`` on a free loopback port for the duration of the block."""
    api = VercelApi(env=dict(env or {}))
    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_route("*", "/{tail:.*}", api.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    api.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield api
    finally:
        await runner.cleanup()
