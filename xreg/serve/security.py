"""The app's front gate, as plain ASGI middleware: token, request size, CSRF cookie.

- **Token.** With a token configured every request but ``/static`` needs it:
  ``Authorization: Bearer T``, the ``xreg_token`` cookie, or ``?token=T``
  once (which sets the cookie). Otherwise 401.
- **Size.** A request body over the limit gets 413, whether it says its
  length up front or streams it.
- **CSRF.** Every browser gets a random ``xreg_csrf`` cookie (SameSite
  Strict); a POST must echo it in a ``csrf`` form field or ``X-CSRF-Token``
  header (:func:`check_csrf`), and a cross-origin ``Origin`` is refused.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from xreg.serve.config import ServeConfig

__all__ = ["CSRF_COOKIE", "TOKEN_COOKIE", "Gate", "check_csrf"]

CSRF_COOKIE = "xreg_csrf"
TOKEN_COOKIE = "xreg_token"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _TooLarge(BaseException):  # not Exception: FastAPI would turn it into a 400
    pass


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _cookies(headers: dict[str, str]) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except Exception:  # noqa: BLE001 - a malformed cookie header is no cookie
        return {}
    return {k: m.value for k, m in jar.items()}


async def _plain(send: Send, status: int, text: str,
                 extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = json.dumps({"error": text}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


class Gate:
    """Token check, request-size limit and the CSRF cookie, before any route runs."""

    def __init__(self, app: ASGIApp, config: ServeConfig) -> None:
        self.app, self.config = app, config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        cookies = _cookies(headers)
        set_cookies: list[tuple[bytes, bytes]] = []
        if self.config.token and not scope["path"].startswith("/static/"):
            given = self._token(scope, headers, cookies)
            if given is None or not hmac.compare_digest(given.encode(),
                                                        self.config.token.encode()):
                await _plain(send, 401, "a valid token is needed (xreg serve printed it)",
                             ((b"www-authenticate", b"Bearer"),))
                return
            if cookies.get(TOKEN_COOKIE) != given:
                set_cookies.append(_cookie(TOKEN_COOKIE, given))
        csrf = cookies.get(CSRF_COOKIE) or ""
        if len(csrf) < 20:
            csrf = secrets.token_urlsafe(24)
            set_cookies.append(_cookie(CSRF_COOKIE, csrf))
        scope.setdefault("state", {})["csrf"] = csrf
        if scope["method"] == "POST" and not _same_origin(headers):
            await _plain(send, 403, "cross-origin request refused")
            return
        limit = self.config.max_request_bytes
        try:
            declared = int(headers.get("content-length", "0") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            await _plain(send, 413, f"request too large: the limit is {_mb(limit)}")
            return
        await self._forward(scope, receive, send, set_cookies, limit)

    def _token(self, scope: Scope, headers: dict[str, str],
               cookies: dict[str, str]) -> str | None:
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        query: dict[str, list[str]] = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if query.get("token"):
            return query["token"][0]
        return cookies.get(TOKEN_COOKIE)

    async def _forward(self, scope: Scope, receive: Receive, send: Send,
                       set_cookies: list[tuple[bytes, bytes]], limit: int) -> None:
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        async def send_with_cookies(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                have = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *set_cookies,
                                      *(h for h in _SECURITY_HEADERS if h[0] not in have)]
            await send(message)

        try:
            await self.app(scope, counted, send_with_cookies)
        except _TooLarge:
            if not started:
                await _plain(send, 413, f"request too large: the limit is {_mb(limit)}")


_SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
     b"frame-ancestors 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    # Not no-referrer: under it a browser sends "Origin: null" on same-origin POSTs.
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.0f} MB" if n >= 1024 * 1024 else f"{n} bytes"


def _cookie(name: str, value: str) -> tuple[bytes, bytes]:
    return (b"set-cookie",
            f"{name}={value}; Path=/; HttpOnly; SameSite=Strict".encode("latin-1"))


def _same_origin(headers: dict[str, str]) -> bool:
    origin = headers.get("origin")
    if not origin or origin == "null":
        return origin != "null"
    host = headers.get("host", "")
    return origin.split("://", 1)[-1].rstrip("/") == host


def check_csrf(expected: str, given: str | None) -> bool:
    """True when a POST echoes its browser's CSRF cookie."""
    return bool(expected) and given is not None and hmac.compare_digest(
        expected.encode(), given.encode())
