"""The ASGI layer around every request: bearer token, upload cap, security headers, one log line.

    app = Guard(app, token="s3cret", max_body=20 << 20, public=("/health", "/", "/static/*"))

- ``token``: every route but the ``public`` ones (exact paths, or prefixes ending in ``*``) needs
  ``Authorization: Bearer <token>`` (401 otherwise). The public routes hold no data: the health check, and the page
  with its static files (it asks for the token and sends it with every request it makes).
- ``max_body``: a request whose body is larger is answered 413, from its Content-Length before anything is read,
  or as soon as the bytes read so far exceed it (a chunked upload).
- Every response gets ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` and a
  Content-Security-Policy that allows nothing from another origin (the page needs no CDN).
- One line per request on the ``retr.serve.access`` logger: client, method, path, status, bytes, milliseconds.
- An exception that escapes a route (a bug) is logged with its traceback and answered 500 with one line.
"""

from __future__ import annotations

import hmac
import json
import logging
import time

log = logging.getLogger("retr.serve")
access_log = logging.getLogger("retr.serve.access")

_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                                 b"frame-ancestors 'none'; base-uri 'none'"),
]


class BodyTooLarge(Exception):
    """The request's body passed the cap while being read."""


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


async def send_error(send, status: int, message: str, headers: list | None = None) -> None:
    body = error_body(message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or []), *_HEADERS]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(self, app, token: str | None = None, max_body: int = 20 << 20,
                 public: tuple[str, ...] = ("/health",)):
        self.app = app
        self.token = token.encode() if token else None
        self.max_body = max_body
        self.public = public

    def _is_public(self, path: str) -> bool:
        return any(path.startswith(p[:-1]) if p.endswith("*") else path == p for p in self.public)

    def _authorized(self, scope) -> bool:
        if self.token is None or self._is_public(scope["path"]):
            return True
        for k, v in scope["headers"]:
            if k == b"authorization":
                scheme, _, cred = v.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(cred.strip(), self.token)
        return False

    def _declared_length(self, scope) -> int | None:
        for k, v in scope["headers"]:
            if k == b"content-length":
                try:
                    return int(v)
                except ValueError:
                    return None
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        sent = {"status": 0, "bytes": 0}

        async def send_logged(msg):
            if msg["type"] == "http.response.start":
                sent["status"] = msg["status"]
                msg = dict(msg, headers=[*msg.get("headers", []), *_HEADERS])
            elif msg["type"] == "http.response.body":
                sent["bytes"] += len(msg.get("body", b""))
            await send(msg)

        read = 0

        async def receive_capped():
            nonlocal read
            msg = await receive()
            if msg["type"] == "http.request":
                read += len(msg.get("body", b""))
                if read > self.max_body:
                    raise BodyTooLarge()
            return msg

        try:
            if not self._authorized(scope):
                await send_error(send_logged, 401, "missing or wrong bearer token: send 'Authorization: Bearer "
                                 "<token>' (the --token the server was started with)",
                                 [(b"www-authenticate", b"Bearer")])
                return
            n = self._declared_length(scope)
            if n is not None and n > self.max_body:
                await send_error(send_logged, 413, self._too_large())
                return
            await self.app(scope, receive_capped, send_logged)
        except BodyTooLarge:
            if sent["status"] == 0:
                await send_error(send_logged, 413, self._too_large())
        except Exception:  # a bug: its traceback goes to the log, never into the response
            log.exception('"%s %s" failed', scope["method"], scope["path"])
            if sent["status"] == 0:
                await send_error(send_logged, 500, "internal error (the server's log has the details)")
        finally:
            client = scope.get("client") or ("-", 0)
            access_log.info('%s "%s %s" %d %dB %.1fms', client[0], scope["method"], scope["path"], sent["status"],
                            sent["bytes"], 1000 * (time.perf_counter() - t0))

    def _too_large(self) -> str:
        return f"upload too large: the limit is {self.max_body / (1 << 20):g} MB (--max-upload)"
