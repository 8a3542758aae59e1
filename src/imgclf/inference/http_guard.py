"""Bounds on what a client may do before its request reaches the application: the size, the number and the time of
its headers. uvicorn bounds none of them with httptools; a client sending its headers a byte at a time holds a
connection for as long as it likes (slowloris). :class:`GuardedHttpToolsProtocol` is uvicorn's httptools protocol
with a clock that runs whenever the server is not answering a request, and a bound on each request head's size and
header count. httptools parses in C; it replaced the h11 protocol this guard first wrapped, for 6% more requests/s at
concurrency 32 and a lower p99 at 1 and 8 (benchmarks/results/serve.json against serve_h11.json, one host, one
sitting).

uvicorn's protocol classes are not a public API: uv.lock pins the version this subclass was written against, and
tests/test_serve.py checks each bound on a real server. Behind a reverse proxy (nginx, Caddy, a cloud load
balancer), let the proxy also bound them (nginx: ``client_header_timeout``, ``large_client_header_buffers``), and the
number of connections per client.
"""

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 16 * 1024  # request line and headers (browsers send 1–8 KB)
MAX_HEADERS = 100  # Apache's LimitRequestFields default


class HeadTooLarge(Exception):
    """A request head over the bounds (raised from a parser callback: uvicorn answers 400 and closes)."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, bounded: at most :data:`MAX_HEADERS` headers in :data:`MAX_HEAD_BYTES` per request
    head, and a clock that closes a connection left ``head_seconds`` without a request being answered (a head that
    does not arrive in time, from the connection's start or its previous response, or the rest of a body the server
    already answered, a 413 from the header say, that keeps trickling in)."""

    head_seconds = 10.0  # set per server by :func:`guarded_protocol`

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.deadline: asyncio.TimerHandle | None = None
        self.in_head, self.head_bytes, self.head_size, self.header_count = False, 0, 0, 0

    def answering(self) -> bool:
        """True while a request's response is under way."""
        return self.cycle is not None and not self.cycle.response_complete

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock for the first request."""
        super().connection_made(transport)
        self.restart_clock()

    def restart_clock(self) -> None:
        """Give the client ``head_seconds`` from now."""
        self.stop_clock()
        self.deadline = self.loop.call_later(self.head_seconds, self.too_slow)

    def stop_clock(self) -> None:
        """No deadline: a request is being answered (its own timeout applies)."""
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def too_slow(self) -> None:
        """Close the connection unless a request is being answered."""
        self.deadline = None
        if not self.answering() and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        """uvicorn's; a head still arriving past :data:`MAX_HEAD_BYTES` (one endless header, say) is refused."""
        super().data_received(data)
        if self.in_head and not self.transport.is_closing():
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self.send_400_response(f"a request head over {MAX_HEAD_BYTES:,} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head, self.head_bytes, self.head_size, self.header_count = True, 0, 0, 0

    def on_header(self, name: bytes, value: bytes) -> None:
        """uvicorn's, after counting the header against the bounds."""
        self.header_count += 1
        self.head_size += len(name) + len(value) + 4
        if self.header_count > MAX_HEADERS:
            raise HeadTooLarge(f"more than {MAX_HEADERS} headers")
        if self.head_size > MAX_HEAD_BYTES:
            raise HeadTooLarge(f"a request head over {MAX_HEAD_BYTES:,} bytes")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The head is in: the clock stops while the request is answered."""
        self.in_head = False
        self.stop_clock()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        """uvicorn's, then a fresh clock for the next request (unless a pipelined one is already being answered)."""
        super().on_response_complete()
        if not self.answering() and not self.transport.is_closing():
            self.restart_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        """No clock for a closed connection."""
        self.stop_clock()
        super().connection_lost(exc)


def guarded_protocol(head_seconds: float) -> type[GuardedHttpToolsProtocol]:
    """:class:`GuardedHttpToolsProtocol` with the given deadline for request heads."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"head_seconds": head_seconds})
