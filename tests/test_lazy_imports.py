"""Cold start (issue 15): what a plain streaming request never needs is not imported when the
platform imports the function; it is imported, and works, the first time it is needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAZY = ("lib.responses", "lib.responses_upstream", "lib.aisdk", "lib.jwtauth", "jwt", "redis")
# Making a dataclass compiles its methods at import, about 1 ms each (docs/decisions.md).
UNUSED_AT_START = ("dataclasses",)


def test_the_lazy_modules_are_not_imported_at_start() -> None:
    code = (
        "import json, sys, api.generate; "
        f"print(json.dumps([m for m in {LAZY + UNUSED_AT_START!r} if m in sys.modules]))"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "UPSTREAM_", "AUTH_", "REDIS_"))
    }
    env.update(OPENAI_API_KEY="sk-test", PYTHONPATH=str(ROOT))
    out = subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.splitlines()[-1]) == []


def test_the_route_name_is_the_responses_modules() -> None:
    from lib import handler, responses

    assert handler.RESPONSES_ROUTE == responses.ROUTE
