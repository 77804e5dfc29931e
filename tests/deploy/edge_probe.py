"""Clients and a server for the edge firewall test, run inside network namespaces.

    python edge_probe.py serve                      # HTTP on 80, UDP echo on 443
    python edge_probe.py burst SOURCE HOST N WAIT   # N connects at once: how many got through
    python edge_probe.py udp SOURCE HOST N WAIT     # N new UDP flows to 443: how many answered
    python edge_probe.py get SOURCE HOST            # one HTTP request: its status
    python edge_probe.py hold SOURCE HOST N         # N connections held; a line on stdin closes one

Each client command prints one JSON line. A connect counts as refused when it is not established
within WAIT (or CONNECT_WAIT) seconds: the firewall drops the SYN, and the kernel's first retry
comes only after a second.
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONNECT_WAIT = 0.8


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class Server(ThreadingHTTPServer):
    request_queue_size = 256  # the burst test's connects all wait in the accept queue at once
    daemon_threads = True


def serve() -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", 443))  # noqa: S104 (inside its own namespace)

    def echo() -> None:
        while True:
            data, peer = udp.recvfrom(2048)
            udp.sendto(data, peer)

    threading.Thread(target=echo, daemon=True).start()
    server = Server(("0.0.0.0", 80), Handler)  # noqa: S104
    print(json.dumps({"serving": True}), flush=True)
    server.serve_forever()


def connect(source: str, host: str, port: int = 80) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(CONNECT_WAIT)
    try:
        sock.connect((host, port))
    except OSError:
        sock.close()
        return None
    return sock


def burst(source: str, host: str, count: int, wait: float) -> dict[str, int]:
    selector = selectors.DefaultSelector()
    pending = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((source, 0))
        sock.setblocking(False)
        sock.connect_ex((host, 80))
        selector.register(sock, selectors.EVENT_WRITE)
        pending.append(sock)
    established = 0
    deadline = time.monotonic() + wait
    while selector.get_map() and (left := deadline - time.monotonic()) > 0:
        for key, _ in selector.select(left):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            selector.unregister(ready)
            if ready.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                established += 1
    for sock in pending:
        sock.close()
    return {"established": established, "tried": count}


def udp(source: str, host: str, count: int, wait: float) -> dict[str, int]:
    socks = []
    for n in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((source, 0))
        sock.setblocking(False)
        sock.sendto(b"%d" % n, (host, 443))
        socks.append(sock)
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    answered = 0
    deadline = time.monotonic() + wait
    while selector.get_map() and (left := deadline - time.monotonic()) > 0:
        for key, _ in selector.select(left):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            selector.unregister(ready)
            ready.recv(2048)
            answered += 1
    for sock in socks:
        sock.close()
    return {"answered": answered, "tried": count}


def get(source: str, host: str) -> dict[str, object]:
    sock = connect(source, host)
    if sock is None:
        return {"status": None}
    with sock:
        sock.settimeout(5)
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = sock.recv(4096).split(b"\r\n", 1)[0].decode()
    return {"status": int(head.split()[1])}


def hold(source: str, host: str, count: int) -> None:
    held = [s for s in (connect(source, host) for _ in range(count)) if s is not None]
    print(json.dumps({"held": len(held)}), flush=True)
    sys.stdin.readline()  # the test has tried another client meanwhile
    extra = connect(source, host)
    print(json.dumps({"one_more": extra is not None}), flush=True)
    sys.stdin.readline()
    held.pop().close()
    time.sleep(0.2)
    again = connect(source, host)
    print(json.dumps({"after_closing_one": again is not None}), flush=True)
    for sock in [*held, extra, again]:
        if sock is not None:
            sock.close()


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "serve":
        serve()
    elif command == "burst":
        print(json.dumps(burst(args[0], args[1], int(args[2]), float(args[3]))), flush=True)
    elif command == "udp":
        print(json.dumps(udp(args[0], args[1], int(args[2]), float(args[3]))), flush=True)
    elif command == "get":
        print(json.dumps(get(args[0], args[1])), flush=True)
    elif command == "hold":
        hold(args[0], args[1], int(args[2]))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
