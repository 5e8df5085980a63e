"""Opening the upstream stream with retries and fallbacks (the policy is in ``lib/retry.py``).

The handler calls :func:`open_upstream` before the relay sends anything, so every retry here
happens before the first byte reaches the caller. Each fallback gets the same request, sent to
its own base URL with its own key and, if configured, its own model.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from lib.config import ENDPOINT_PATHS, UpstreamSettings
from lib.request import UpstreamRequest
from lib.retry import Target, open_with_retries
from lib.upstream import UpstreamClient, UpstreamStream


def retarget(request: UpstreamRequest, target: Target) -> UpstreamRequest:
    """The same request, addressed to ``target`` (and for its model, if it names one)."""
    if target.name == "primary":
        return request
    url = target.base_url.rstrip("/") + ENDPOINT_PATHS[request.endpoint]
    body = request.body
    if target.model is not None:
        payload = json.loads(body)
        payload["model"] = target.model
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return request._replace(url=url, body=body)


async def open_upstream(
    client: UpstreamClient,
    request: UpstreamRequest,
    upstream: UpstreamSettings,
    *,
    cut_at: float | None,
    on_attempt: Callable[[Target], None],
) -> UpstreamStream:
    """The first upstream stream that opens; raises the last failure if none does.
    ``on_attempt`` hears of each request sent (the handler counts them for its log line)."""
    stream, _ = await open_with_retries(
        upstream.targets,
        lambda target: client.open(retarget(request, target), target.api_key),
        upstream.retry_policy,
        cut_at=cut_at,
        clock=asyncio.get_running_loop().time,
        on_attempt=on_attempt,
    )
    return stream
