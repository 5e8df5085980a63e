"""Opening the upstream stream with retries and fallbacks (the policy is in ``lib/retry.py``).

The handler calls :func:`open_upstream` before the relay sends anything, so every retry here
happens before the first byte reaches the caller. Each fallback gets the same request, sent to
its own base URL with its own key and, if configured, its own model.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

from lib.config import Settings
from lib.log import RequestLog
from lib.request import UpstreamRequest
from lib.retry import Target, open_with_retries
from lib.upstream import UpstreamClient, UpstreamStream

_PATHS = {"chat": "/chat/completions", "completions": "/completions", "responses": "/responses"}


def targets(settings: Settings, api_key: str) -> tuple[Target, ...]:
    """The primary upstream, then the configured fallbacks in order."""
    return (Target("primary", settings.openai_base_url, api_key), *settings.fallbacks)


def retarget(request: UpstreamRequest, target: Target) -> UpstreamRequest:
    """The same request, addressed to ``target`` (and for its model, if it names one)."""
    if target.name == "primary":
        return request
    url = target.base_url.rstrip("/") + _PATHS[request.endpoint]
    body = request.body
    if target.model is not None:
        payload = json.loads(body)
        payload["model"] = target.model
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return replace(request, url=url, body=body)


async def open_upstream(
    client: UpstreamClient,
    request: UpstreamRequest,
    settings: Settings,
    api_key: str,
    log: RequestLog,
    cut_at: float | None,
) -> UpstreamStream:
    """The first upstream stream that opens; raises the last failure if none does."""
    loop = asyncio.get_running_loop()

    def record(target: Target) -> None:
        log.attempts += 1
        log.upstream = target.name

    stream, _ = await open_with_retries(
        targets(settings, api_key),
        lambda target: client.open(retarget(request, target), target.api_key),
        settings.retry_policy,
        cut_at=cut_at,
        clock=loop.time,
        on_attempt=record,
    )
    return stream
