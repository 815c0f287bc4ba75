"""``mlapi healthcheck``: exit 0 only if the server's readiness route answers 200.

Docker runs it every few seconds in every replica, so it must cost what a bare
Python start costs: it imports neither the settings stack (pydantic, about 0.2 s
of CPU) nor an HTTP client library (http.client pulls in the email package: 40 ms):
it writes one GET on a socket and reads the status line. It reads the only two
settings it needs, API_HOST and API_PORT, straight from the environment (the one
place besides ``settings`` that does; both are plain values the settings would
pass through unchanged)."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    url, timeout_s = _arguments(argv)
    try:
        host, port, path = _split(url)
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            head = sock.recv(64)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"mlapi: not ready: {url} unreachable ({exc})\n")
        return 1
    status = head.split(b" ", 2)[1:2]  # b"HTTP/1.1 200 OK\r\n..."
    if status != [b"200"]:
        shown = status[0].decode("latin-1") if status else "no HTTP status"
        sys.stderr.write(f"mlapi: not ready: {url} answered {shown}\n")
        return 1
    return 0


def _split(url: str) -> tuple[str, int, str]:
    """(host, port, path) of an http:// URL."""
    rest = url.removeprefix("http://")
    if rest == url:
        raise ValueError("only http:// URLs are checked")
    authority, _, path = rest.partition("/")
    if authority.startswith("["):
        host, _, port = authority[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = authority.partition(":")
    return host, int(port or 80), "/" + path


def _arguments(argv: Sequence[str]) -> tuple[str, float]:
    url = None
    timeout_s = 3.0
    args = list(argv)
    while args:
        flag = args.pop(0)
        if flag in ("--url", "--timeout") and args:
            value = args.pop(0)
            if flag == "--url":
                url = value
            else:
                timeout_s = _seconds(value)
        elif flag in ("-h", "--help"):
            sys.stdout.write("usage: mlapi healthcheck [--url URL] [--timeout SECONDS]\n")
            raise SystemExit(0)
        else:
            _fail(f"unknown or incomplete argument '{flag[:40]}'")
    return url or _default_url(), timeout_s


def _default_url() -> str:
    host = os.environ.get("API_HOST", "127.0.0.1").strip()
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    host = f"[{host}]" if ":" in host else host
    port = os.environ.get("API_PORT", "8000").strip()
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        _fail("invalid setting API_PORT: must be a port number")
    return f"http://{host}:{port}/health"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 300:
        _fail("--timeout must be a number of seconds between 0 and 300")
    return value


def _fail(message: str) -> None:
    sys.stderr.write(f"mlapi: error: {message}\n")
    raise SystemExit(2)
