#!/usr/bin/env python3
"""A Realtime API client for the durability script (tests/durability/sigkill.sh), standard library
only: opens a WebSocket session through tollgate (GET /v1/realtime?model=...), waits for
session.created, asks for N responses (response.create) and reads each to its response.done, then
prints the session's x-request-id and keeps the connection open until it is closed from the
other side (the script kills tollgate meanwhile) or --hold seconds pass.

usage: realtime_client.py --url http://127.0.0.1:PORT/v1 [--model gpt-realtime] [--responses 2] [--hold 30]
"""
import argparse
import base64
import json
import os
import socket
import struct
import sys
import urllib.parse


def read_exact(sock, n, buf):
    while len(buf) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf[:n], buf[n:]


def read_message(sock, buf):
    """One whole text/binary message (continuations joined); control frames are skipped."""
    parts = []
    while True:
        head, buf = read_exact(sock, 2, buf)
        fin, opcode = head[0] & 0x80, head[0] & 0x0F
        length = head[1] & 0x7F
        if length == 126:
            ext, buf = read_exact(sock, 2, buf)
            length = struct.unpack(">H", ext)[0]
        elif length == 127:
            ext, buf = read_exact(sock, 8, buf)
            length = struct.unpack(">Q", ext)[0]
        payload, buf = read_exact(sock, length, buf)
        if opcode == 8:
            raise ConnectionError("close frame")
        if opcode >= 8:
            continue
        parts.append(payload)
        if fin:
            return b"".join(parts), buf


def send_text(sock, text):
    data = text.encode()
    mask = os.urandom(4)
    head = bytes([0x81])
    if len(data) < 126:
        head += bytes([0x80 | len(data)])
    elif len(data) < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", len(data))
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", len(data))
    sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", default="gpt-realtime")
    ap.add_argument("--responses", type=int, default=2)
    ap.add_argument("--hold", type=float, default=30)
    a = ap.parse_args()
    u = urllib.parse.urlsplit(a.url)
    sock = socket.create_connection((u.hostname, u.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {u.path.rstrip('/')}/realtime?model={a.model} HTTP/1.1\r\nHost: {u.netloc}\r\n"
                  f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\nAuthorization: Bearer sk-durability\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            sys.exit("realtime_client: the handshake was not answered")
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    if " 101 " not in lines[0] + " ":
        sys.exit(f"realtime_client: handshake answered {lines[0]}")
    request_id = next((l.split(":", 1)[1].strip() for l in lines[1:] if l.lower().startswith("x-request-id:")), "")
    msg, buf = read_message(sock, buf)
    if json.loads(msg).get("type") != "session.created":
        sys.exit(f"realtime_client: expected session.created, got {msg[:200]!r}")
    for _ in range(a.responses):
        send_text(sock, json.dumps({"type": "response.create"}))
        while True:
            msg, buf = read_message(sock, buf)
            if json.loads(msg).get("type") == "response.done":
                break
    print(request_id, flush=True)
    sock.settimeout(a.hold)
    try:
        while sock.recv(65536):
            pass
    except (OSError, ConnectionError):
        pass


if __name__ == "__main__":
    main()
