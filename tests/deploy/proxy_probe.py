"""Stand-ins for the API and the dashboard behind Caddy, and clients of Caddy, in a namespace.

    python proxy_probe.py serve            # "api" on 127.0.0.1:8000, "dashboard" on 127.0.0.1:5006
    python proxy_probe.py sse SECONDS      # an SSE stream through Caddy: events received
    python proxy_probe.py ws SECONDS       # websocket messages through Caddy: echoes received
    python proxy_probe.py slow-headers     # headers dribbled: when Caddy hangs up
    python proxy_probe.py idle             # one request, then nothing: when Caddy hangs up
    python proxy_probe.py post SIZE        # a request body of SIZE bytes to the API: the status
    python proxy_probe.py forwarded        # a client's own X-Forwarded-For: what the API is told

Each client command prints one JSON line. Caddy listens on 127.0.0.1:80.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

CADDY = ("127.0.0.1", 80)
EVENT_EVERY = 0.25


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        url = urlsplit(self.path)
        if url.path == "/api/v1/stream":
            seconds = float(parse_qs(url.query)["seconds"][0])
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for n in range(int(seconds / EVENT_EVERY)):
                data = f"id: {n}\ndata: {n}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                time.sleep(EVENT_EVERY)
            self.wfile.write(b"0\r\n\r\n")
            return
        self.reply({"x-forwarded-for": self.headers.get_all("X-Forwarded-For", [])})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", "0"))
        self.reply({"received": len(self.rfile.read(length))})

    def reply(self, document: object) -> None:
        body = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


async def echo(connection: ServerConnection) -> None:
    async for message in connection:
        await connection.send(message)


async def dashboard() -> None:
    async with serve(echo, "127.0.0.1", 5006, ping_interval=None):
        print(json.dumps({"serving": True}), flush=True)
        await asyncio.Future()


def serve_both() -> None:
    api = ThreadingHTTPServer(("127.0.0.1", 8000), Api)
    api.daemon_threads = True
    threading.Thread(target=api.serve_forever, daemon=True).start()
    asyncio.run(dashboard())


def sse(seconds: float) -> dict[str, float]:
    started = time.monotonic()
    events = 0
    with socket.create_connection(CADDY, timeout=seconds + 5) as sock:
        request = f"GET /api/v1/stream?seconds={seconds} HTTP/1.1\r\nHost: localhost\r\n\r\n"
        sock.sendall(request.encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
            events = received.count(b"\ndata: ")
            if received.endswith(b"0\r\n\r\n"):
                break
    return {"events": events, "seconds": round(time.monotonic() - started, 2)}


async def websocket(seconds: float) -> dict[str, float]:
    started = time.monotonic()
    echoes = 0
    async with connect("ws://127.0.0.1/ws", ping_interval=None) as ws:
        for n in range(int(seconds / EVENT_EVERY)):
            await ws.send(str(n))
            if await ws.recv() == str(n):
                echoes += 1
            await asyncio.sleep(EVENT_EVERY)
    return {"echoes": echoes, "seconds": round(time.monotonic() - started, 2)}


def hung_up_after(sock: socket.socket, started: float, dribble: bytes | None) -> float | None:
    """Seconds until the peer closes the connection (None: still open after 10 s)."""
    sock.settimeout(0.1)
    while time.monotonic() - started < 10:
        try:
            if sock.recv(65536) == b"":
                return round(time.monotonic() - started, 2)
        except TimeoutError:
            pass
        except ConnectionResetError:
            return round(time.monotonic() - started, 2)
        if dribble is not None:
            try:
                sock.sendall(dribble)
            except OSError:
                return round(time.monotonic() - started, 2)
    return None


def slow_headers() -> dict[str, float | None]:
    with socket.create_connection(CADDY) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /api/v1/echo HTTP/1.1\r\nHost: localhost\r\n")
        return {"closed_after": hung_up_after(sock, started, b"X-a: b\r\n")}


def idle() -> dict[str, float | None]:
    with socket.create_connection(CADDY) as sock:
        sock.sendall(b"GET /api/v1/echo HTTP/1.1\r\nHost: localhost\r\n\r\n")
        sock.settimeout(5)
        first = sock.recv(65536)
        started = time.monotonic()
        return {"status": int(first.split()[1]), "closed_after": hung_up_after(sock, started, None)}


def post(size: int) -> dict[str, int]:
    body = b"x" * size
    with socket.create_connection(CADDY, timeout=10) as sock:
        head = f"POST /api/v1/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: {size}\r\n"
        sock.sendall(head.encode() + b"Connection: close\r\n\r\n")
        try:
            sock.sendall(body)
        except OSError:
            pass  # refused before the body was read
        return {"status": int(sock.recv(65536).split()[1])}


def forwarded() -> dict[str, object]:
    with socket.create_connection(CADDY, timeout=10) as sock:
        sock.sendall(
            b"GET /api/v1/echo HTTP/1.1\r\nHost: localhost\r\n"
            b"X-Forwarded-For: 203.0.113.9\r\nX-Real-IP: 203.0.113.9\r\n"
            b"Forwarded: for=203.0.113.9\r\nConnection: close\r\n\r\n"
        )
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    parsed: dict[str, object] = json.loads(received.split(b"\r\n\r\n", 1)[1])
    return parsed


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "serve":
        serve_both()
        return
    results = {
        "sse": lambda: sse(float(args[0])),
        "ws": lambda: asyncio.run(websocket(float(args[0]))),
        "slow-headers": slow_headers,
        "idle": idle,
        "post": lambda: post(int(args[0])),
        "forwarded": forwarded,
    }
    print(json.dumps(results[command]()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
