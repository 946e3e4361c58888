"""Checks every request passes before any route: who may call the server, and how large a body may be.

- `Host` must be one the server answers to (the loopback names, the address it listens on, `--allowed-host`): a page
  on another site that re-points its own name at 127.0.0.1 (DNS rebinding) sends its own name and is refused, so it
  can neither read the API nor stream library files.
- A state-changing request (POST, PUT, PATCH, DELETE) that carries an `Origin` must come from the server's own origin:
  browsers send `Origin` on every cross-site POST.
- A body may not exceed the route's limit, whether its length is declared or it arrives chunked: the bytes are
  counted as they arrive and the request is refused (413) at the first byte over.

One ASGI middleware rather than Starlette's TrustedHostMiddleware and body limit, whose plain-text answers do not say
which limit was hit or which option raises it; errors here are the API's JSON `{"detail": ...}`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class BodyTooLarge(HTTPException):
    """Raised from `receive` at the first byte over the limit; an HTTPException, so FastAPI's body parsing passes it on."""

    def __init__(self, detail: str):
        super().__init__(status_code=413, detail=detail)


def split_host(value: str) -> tuple[str, int | None] | None:
    """(lower-case name without IPv6 brackets, port or None) of a `Host` value; None when it does not parse."""
    if not value or any(c in value for c in "/?#@ \t\\"):
        return None
    try:
        parts = urlsplit(f"//{value}")
        name, port = parts.hostname, parts.port
    except ValueError:
        return None
    return (name, port) if name else None


class HostList:
    """Allowed `Host` values: "name" (any port) or "name:port"; "*" allows any."""

    def __init__(self, entries: Iterable[str]):
        self.entries = [str(e).strip() for e in entries if str(e).strip()]
        self.any = "*" in self.entries
        self._parsed = []
        for entry in self.entries:
            if entry != "*":
                bare_ipv6 = entry.count(":") > 1 and not entry.startswith("[")
                parsed = split_host(f"[{entry}]" if bare_ipv6 else entry)
                if parsed is None:
                    raise ValueError(f"{entry!r}: not a host name, host:port or '*'")
                self._parsed.append(parsed)

    def allows(self, host: str | None, scheme: str) -> bool:
        if self.any:
            return True
        parsed = split_host(host or "")
        if parsed is None:
            return False
        name, port = parsed
        port = port if port is not None else DEFAULT_PORTS.get(scheme)
        return any(name == n and (p is None or p == port) for n, p in self._parsed)


def same_origin(origin: str, host: str, scheme: str) -> bool:
    """Whether an `Origin` header names this very server (scheme, name and port as the request's `Host`)."""
    try:
        o = urlsplit(origin)
        o_port = o.port if o.port is not None else DEFAULT_PORTS.get(o.scheme)
    except ValueError:
        return False
    own = split_host(host)
    if own is None or not o.hostname:
        return False
    own_port = own[1] if own[1] is not None else DEFAULT_PORTS.get(scheme)
    return o.scheme == scheme and o.hostname == own[0] and o_port == own_port


class Guard:
    """ASGI middleware: Host allow-list, same-origin state changes, body-size limit (see the module docstring).

    `body_limit(scope)` gives (bytes allowed, message when over) for a request, read per request so that limits changed
    on a running engine apply.
    """

    def __init__(self, app: ASGIApp, hosts: HostList, body_limit: Callable[[Scope], tuple[int, str]]):
        self.app, self.hosts, self.body_limit = app, hosts, body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        scheme = scope.get("scheme", "http")
        host = headers.get("host")
        if not self.hosts.allows(host, scheme):
            await self._refuse(scope, receive, send, 403, f"Host {host!r} refused: this server answers only to "
                               f"{', '.join(self.hosts.entries)} (a page of another site cannot use it; "
                               "stemjepa serve --allowed-host NAME adds a name)")
            return
        origin = headers.get("origin")
        if scope["method"] not in SAFE_METHODS and origin is not None and not same_origin(origin, host, scheme):
            await self._refuse(scope, receive, send, 403, f"cross-site request refused: Origin {origin!r} is not this "
                               f"server ({scheme}://{host}); only the server's own page may change its state")
            return
        limit, message = self.body_limit(scope)
        declared = headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, 413, message)
            return
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(message)
            return msg

        await self.app(scope, counted, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
        await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
