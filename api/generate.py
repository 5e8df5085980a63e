"""``POST /api/generate``: relay an OpenAI-compatible token stream to the caller as it arrives.

Vercel's Python runtime imports this file and serves the module-level ``app`` (ASGI). Everything
it does lives in ``lib/``; this file only reads the settings once and composes. A bad setting or
a missing key must not crash the import (the platform would turn that into an opaque failure):
the function still starts and answers every request with a 500 that names the variable to fix.
"""

from __future__ import annotations

import os

from lib.asgi import App
from lib.config import SettingsError, load_settings
from lib.handler import GenerateHandler, Misconfigured

handler: GenerateHandler | Misconfigured
try:
    handler = GenerateHandler(load_settings(os.environ))
except SettingsError as error:
    handler = Misconfigured(str(error))
# The runtime serves any async callable of (scope, receive, send), an instance with an async
# ``__call__`` included: the handler itself, logging and CORS included, with no middleware or
# wrapper function around it (each would be one coroutine frame more per open stream).
app: App = handler
