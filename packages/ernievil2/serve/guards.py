"""ASGI middleware in front of every route: the Host header must name this service (DNS rebinding), and a
request body may not exceed a limit, judged from Content-Length before any byte of the body is read and counted
while a chunked body streams in.  Both answer with the service's JSON error shape."""
import ipaddress
import json
import socket

LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def allowed_host_names(bound_host, allow_hosts=()):
    """The Host names a service bound to `bound_host` answers to: the localhost names, the bound address (for a
    wildcard bind, this machine's names), and `allow_hosts` ("*" allows any)."""
    names = set(LOCAL_NAMES) | {h.strip().lower().strip("[]") for h in allow_hosts if h.strip()}
    bound = (bound_host or "").lower().strip("[]")
    if bound in WILDCARDS:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    else:
        names.add(bound)
    return frozenset(names)


def host_name(header):
    """'example.com:8000' -> 'example.com', '[::1]:8000' -> '::1' (lower case)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _is_ip(name):
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def is_loopback(client_host):
    try:
        return ipaddress.ip_address(client_host).is_loopback
    except (ValueError, TypeError):
        return False


async def send_json_error(send, status, message, headers=()):
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Host check and body limit.  A bind to a wildcard address also accepts any IP-literal Host (a browser that
    addresses the machine by IP is on that origin already; rebinding needs a domain name)."""

    def __init__(self, app, bound_host, allow_hosts=(), max_body_bytes=None):
        self.app = app
        self.names = allowed_host_names(bound_host, allow_hosts)
        self.any_host = "*" in self.names
        self.any_ip = (bound_host or "").strip("[]") in WILDCARDS
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or ())
        problem = self._host_problem(headers.get(b"host", b"").decode("latin-1"))
        if problem:
            return await send_json_error(send, 400, problem)
        limit = self.max_body_bytes
        length = headers.get(b"content-length")
        if limit is not None and length is not None:
            try:
                too_big = int(length) > limit
            except ValueError:
                return await send_json_error(send, 400, "Content-Length is not a number")
            if too_big:  # answered before the body is read: nothing lands anywhere
                return await send_json_error(send, 413, f"the request body is over the limit of {limit} bytes",
                                             [(b"connection", b"close")])
        if limit is None:
            return await self.app(scope, receive, send)
        await _LimitedBody(self.app, limit)(scope, receive, send)

    def _host_problem(self, header):
        if self.any_host:
            return None
        if not header:
            return "the request has no Host header"
        name = host_name(header)
        if name in self.names or (self.any_ip and _is_ip(name)):
            return None
        return (f"Host {name!r} is not a name this service answers to (DNS rebinding guard); start serve with "
                f"--allow-host {name} to allow it")


class _LimitedBody:
    """Counts a streamed body; past the limit it answers 413 itself and tells the app the client went away."""

    def __init__(self, app, limit):
        self.app, self.limit = app, limit
        self.received = 0
        self.refused = False
        self.started = False

    async def __call__(self, scope, receive, send):
        self.send = send

        async def limited_receive():
            if self.refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > self.limit:
                    self.refused = True
                    if not self.started:
                        self.started = True
                        await send_json_error(send, 413, f"the request body is over the limit of {self.limit} "
                                                         f"bytes", [(b"connection", b"close")])
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if self.refused:
                return  # the 413 is the answer
            if message["type"] == "http.response.start":
                self.started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not self.refused:  # the app's reaction to the "disconnect" is of no interest: the 413 went out
                raise
