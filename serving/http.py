"""The ASGI layer in front of the API: API keys, body size, 422 for invalid bodies, and a
``/readyz`` that says what is served.

- Keys: ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``, on every path but the health
  probes and the docs page (which carries the schema only, no data). Keys are compared as
  SHA-256 digests with ``hmac.compare_digest`` against every configured key, so the time taken
  does not depend on how much of a key matched, nor on which key it was.
- Bodies: larger than ``serving.max_body_bytes`` -> 413, read no further. A JSON body that
  fails its endpoint's request model -> 422 with Pydantic's errors (field path and reason; the
  rejected input itself is never echoed or logged). BentoML alone would answer 400.
- ``/readyz``: 200 with the served versions (or the popularity fallback and why), 503 while
  nothing can be served.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/", "/docs.json"})
OPEN_PREFIXES = ("/static_content/",)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_matches(presented: str | None, digests: Iterable[bytes]) -> bool:
    """Whether ``presented`` is one of the keys, in time independent of the keys' content."""
    if not presented:
        return False
    candidate = _digest(presented)
    matched = False
    for digest in digests:  # no early exit: every key is compared
        matched |= hmac.compare_digest(candidate, digest)
    return matched


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    if b"x-api-key" in headers:
        return headers[b"x-api-key"].decode("latin-1").strip()
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class ApiGate:
    """Pure ASGI middleware (no per-request Starlette objects: it sits on the hot path)."""

    def __init__(
        self,
        app: Callable,
        *,
        keys: list[str],
        max_body_bytes: int,
        models: dict[str, type[BaseModel]],
        status: Callable[[], dict[str, Any]],
    ):
        if not keys:
            raise ValueError(
                "serving.api_keys: no API key configured (set RECLOOP_SERVING__API_KEYS or "
                "serving.api_keys_file); the service refuses to run open"
            )
        self.app = app
        self.digests = [_digest(key) for key in keys]
        self.max_body_bytes = max_body_bytes
        self.models = {f"/{name}": model for name, model in models.items()}
        self.status = status

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/readyz":
            status = self.status()
            await _json(send, 200 if status["ready"] else 503, status)
            return
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if not key_matches(presented_key(headers), self.digests):
            await _json(send, 401, {"error": "a valid API key is required (X-API-Key header)"},
                        extra=[(b"www-authenticate", b"Bearer")])  # fmt: skip
            return
        model = self.models.get(path)
        if model is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _json(send, 413, {"error": f"body over {self.max_body_bytes} bytes"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                await _json(send, 413, {"error": f"body over {self.max_body_bytes} bytes"})
                return
        try:
            model.model_validate_json(body)
        except ValidationError as error:
            await _json(send, 422, {
                "error": f"{error.error_count()} invalid field(s)",
                "detail": [
                    {"field": ".".join(str(p) for p in e["loc"]) or "body", "reason": e["msg"]}
                    for e in error.errors(include_input=False, include_url=False)
                ],
            })  # fmt: skip
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _json(send, status: int, payload: dict[str, Any], extra=()) -> None:
    body = json.dumps(payload).encode()
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), *extra],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})
