#!/usr/bin/env python3
"""Slow streaming upstream and a streaming client, to measure a proxy's first-chunk pass-through
delay (stdlib only).

  slow_sse.py serve PORT [CHUNKS [INTERVAL_MS]]
      HTTP/1.1 keep-alive server on 127.0.0.1:PORT. POST .../chat/completions answers
      text/event-stream (chunked): the response head at once, then CHUNKS (20) content chunks
      INTERVAL_MS (50) apart, the first one INTERVAL_MS after the head (a model's time to first
      token), then a finish chunk, a usage-only chunk and `data: [DONE]` right after the last one.
      Every content chunk carries "x_sent_ns": the server's CLOCK_MONOTONIC when it was written,
      so a client on the same machine can tell how long the chunk spent in the proxy.

  slow_sse.py client HOST:PORT PATH CONNS CALLS [CHUNKS [WARMUP]]
      CONNS keep-alive connections, WARMUP (1) uncounted calls then CALLS streaming calls on each,
      one after the other (the warm-up round opens the proxy's upstream connections). For each
      call: request written -> first content chunk received ("first"), request written -> last
      byte ("total"), the gaps between content-chunk arrivals ("gap") and, for every content
      chunk, server write -> client receipt ("relay"). Arrival times are taken in data_received,
      i.e. when the bytes come off the socket. Prints one line of key=value, times in
      microseconds: calls ok errors warmup_ok warmup_errors first_p50 first_p99 first_max relay1_p50 relay1_p99 (relay of
      the first chunk) relay_p50 relay_p99 relay_max (all chunks) gap_p50 gap_p99 gap_max total_p50
      total_p99 (+ err=<first error, spaces as _> when there was one).
"""
import asyncio
import json
import math
import sys
import time

FILLER = "The quick brown fox jumps over the lazy dog. " * 18
BODY = json.dumps({
    "model": "gpt-4.1", "stream": True, "stream_options": {"include_usage": True},
    "messages": [{"role": "system", "content": "You are a helpful assistant."},
                 {"role": "user", "content": FILLER}],
    "temperature": 0.2, "max_tokens": 256, "user": "bench"}, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------- server

def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def event(obj) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def content_template(i):
    """Content chunk i as bytes with a %d where the send time goes (filled in at write time)."""
    delta = {"content": f"tok{i} "}
    if i == 0:
        delta["role"] = "assistant"
    obj = {"id": "chatcmpl-slow", "object": "chat.completion.chunk", "created": 1764460800,
           "model": "gpt-4.1-2025-04-14", "x_sent_ns": 0,
           "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    return event(obj).replace(b'"x_sent_ns":0', b'"x_sent_ns":%d')


def tail_events(n):
    base = {"id": "chatcmpl-slow", "object": "chat.completion.chunk", "created": 1764460800,
            "model": "gpt-4.1-2025-04-14"}
    fin = dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
    use = dict(base, choices=[], usage={"prompt_tokens": 231, "completion_tokens": n,
                                        "total_tokens": 231 + n})
    return event(fin) + event(use) + b"data: [DONE]\n\n"


async def serve_conn(reader, writer, chunks, interval):
    templates = [content_template(i) for i in range(chunks)]
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path = (lines[0].split(" ") + ["", ""])[:2]
            length, is_chunked, close = 0, False, False
            for line in lines[1:]:
                k, _, v = line.partition(":")
                k, v = k.strip().lower(), v.strip().lower()
                if k == "content-length":
                    length = int(v)
                elif k == "transfer-encoding" and v.endswith("chunked"):
                    is_chunked = True
                elif k == "connection" and v == "close":
                    close = True
            if is_chunked:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            elif length:
                await reader.readexactly(length)
            if method != "POST" or not path.endswith("/chat/completions"):
                msg = b'{"error":{"message":"not found"}}'
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(msg), msg))
                await writer.drain()
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n"
                             + (b"Connection: close\r\n" if close else b"") + b"\r\n")
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                for i in range(chunks):
                    delay = t0 + interval * (i + 1) - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tail = tail_events(chunks) if i == chunks - 1 else b""
                    data = templates[i] % time.monotonic_ns() + tail
                    # the tail (finish, usage, [DONE], last chunk) goes in the last chunk's write
                    writer.write(chunk(data) + (b"0\r\n\r\n" if tail else b""))
                    await writer.drain()
            if close:
                return
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        return
    finally:
        writer.close()


async def serve(port, chunks, interval):
    server = await asyncio.start_server(
        lambda r, w: serve_conn(r, w, chunks, interval), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------------------------- client

class Call:
    """Incremental HTTP/1.1 response parser for one streaming call."""

    def __init__(self, t_send):
        self.t_send = t_send
        self.buf = b""
        self.state = "head"
        self.status = 0
        self.remaining = 0      # content-length mode
        self.chunk_left = -1    # chunked mode: bytes left in the current chunk (+2 for CRLF)
        self.mode = None
        self.close = False
        self.sse = b""
        self.arrivals = []      # (t_recv_ns, x_sent_ns) per content chunk
        self.done_seen = False
        self.usage_seen = False
        self.t_end = None
        self.error = None

    def feed(self, data, now):
        self.buf += data
        while self.buf and self.state != "done":
            if self.state == "trailer":
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return
                line, self.buf = self.buf[:end], self.buf[end + 2:]
                if not line:
                    self.finish(now)
            elif self.state == "head":
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
                lines = head.split("\r\n")
                self.status = int(lines[0].split(" ")[1])
                self.mode = "close"
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    k, v = k.strip().lower(), v.strip().lower()
                    if k == "content-length":
                        self.mode, self.remaining = "length", int(v)
                    elif k == "transfer-encoding" and v.endswith("chunked"):
                        self.mode = "chunked"
                    elif k == "connection" and v == "close":
                        self.close = True
                self.state = "body"
                if self.mode == "length" and self.remaining == 0:
                    self.finish(now)
            elif self.mode == "length":
                take, self.buf = self.buf[:self.remaining], self.buf[self.remaining:]
                self.remaining -= len(take)
                self.body(take, now)
                if self.remaining == 0:
                    self.finish(now)
            elif self.mode == "close":
                self.body(self.buf, now)
                self.buf = b""
            else:  # chunked
                if self.chunk_left < 0:
                    end = self.buf.find(b"\r\n")
                    if end < 0:
                        return
                    size = int(self.buf[:end].split(b";")[0], 16)
                    self.buf = self.buf[end + 2:]
                    if size == 0:
                        self.state = "trailer"
                        continue
                    self.chunk_left = size + 2
                take, self.buf = self.buf[:self.chunk_left], self.buf[self.chunk_left:]
                self.chunk_left -= len(take)
                self.body(take[:max(0, len(take) - max(0, 2 - self.chunk_left))], now)
                if self.chunk_left == 0:
                    self.chunk_left = -1

    def body(self, data, now):
        self.sse += data
        while True:
            end = self.sse.find(b"\n\n")
            if end < 0:
                return
            ev, self.sse = self.sse[:end], self.sse[end + 2:]
            for line in ev.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    self.done_seen = True
                    continue
                try:
                    obj = json.loads(payload)
                except ValueError:
                    self.error = self.error or "bad JSON in an event"
                    continue
                if obj.get("usage"):
                    self.usage_seen = True
                if "x_sent_ns" in obj:
                    self.arrivals.append((now, obj["x_sent_ns"]))

    def finish(self, now):
        self.state = "done"
        self.t_end = now


class Client(asyncio.Protocol):
    def __init__(self):
        self.transport = None
        self.call = None
        self.waiter = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        now = time.monotonic_ns()
        call = self.call
        if call is None:
            return
        try:
            call.feed(data, now)
        except (ValueError, IndexError) as e:
            call.error = call.error or f"parse error: {e}"
            call.state = "done"
        if call.state == "done" and self.waiter and not self.waiter.done():
            self.waiter.set_result(None)

    def eof_received(self):
        call = self.call
        if call is not None and call.state == "body" and call.mode == "close":
            call.finish(time.monotonic_ns())
        return False

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(None)
        if self.waiter and not self.waiter.done():
            self.waiter.set_result(None)


async def one_conn(host, port, path, calls, chunks, results, warmup=0):
    loop = asyncio.get_running_loop()
    req = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
           f"Authorization: Bearer sk-bench-client\r\nAccept: text/event-stream\r\n"
           f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY
    proto = None
    warm = []
    for i in range(warmup + calls):
        record = results.append if i >= warmup else warm.append
        try:
            if proto is None or proto.lost.done():
                _, proto = await loop.create_connection(Client, host, port)
            proto.waiter = loop.create_future()
            proto.call = call = Call(time.monotonic_ns())
            proto.transport.write(req)
            await asyncio.wait_for(proto.waiter, timeout=60)
        except (OSError, asyncio.TimeoutError) as e:
            record(("error", f"{type(e).__name__}: {e}"))
            if proto is not None:
                proto.transport.close()
            proto = None
            continue
        proto.call = None
        if call.state != "done":
            record(("error", "connection closed mid-response"))
        elif call.status != 200:
            record(("error", f"HTTP {call.status}"))
        elif call.error:
            record(("error", call.error))
        elif len(call.arrivals) != chunks or not call.done_seen or not call.usage_seen:
            record(("error", f"{len(call.arrivals)}/{chunks} chunks, [DONE] "
                             f"{call.done_seen}, usage {call.usage_seen}"))
        else:
            record(("ok", call))
        if call.close or call.state != "done":
            proto.transport.close()
            proto = None
    if proto is not None:
        proto.transport.close()
    return sum(1 for kind, _ in warm if kind == "ok"), [e for kind, e in warm if kind == "error"]


def pct(values, p):
    if not values:
        return 0
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


async def client(target, path, conns, calls, chunks, warmup):
    host, port = target.rsplit(":", 1)
    results = []
    warm = await asyncio.gather(*(one_conn(host, int(port), path, calls, chunks, results, warmup)
                                  for _ in range(conns)))
    warm_ok = sum(w[0] for w in warm)
    warm_errs = [e for w in warm for e in w[1]]
    ok = [c for kind, c in results if kind == "ok"]
    errs = [e for kind, e in results if kind == "error"]
    first = [(c.arrivals[0][0] - c.t_send) / 1e3 for c in ok]
    total = [(c.t_end - c.t_send) / 1e3 for c in ok]
    relay = [(t - s) / 1e3 for c in ok for t, s in c.arrivals]
    relay1 = [(c.arrivals[0][0] - c.arrivals[0][1]) / 1e3 for c in ok]
    gap = [(c.arrivals[i][0] - c.arrivals[i - 1][0]) / 1e3 for c in ok
           for i in range(1, len(c.arrivals))]
    out = {"calls": len(results), "ok": len(ok), "errors": len(errs),
           "warmup_ok": warm_ok, "warmup_errors": len(warm_errs),
           "first_p50": pct(first, 50), "first_p99": pct(first, 99), "first_max": pct(first, 100),
           "relay1_p50": pct(relay1, 50), "relay1_p99": pct(relay1, 99),
           "relay_p50": pct(relay, 50), "relay_p99": pct(relay, 99), "relay_max": pct(relay, 100),
           "gap_p50": pct(gap, 50), "gap_p99": pct(gap, 99), "gap_max": pct(gap, 100),
           "total_p50": pct(total, 50), "total_p99": pct(total, 99)}
    line = " ".join(f"{k}={v:.0f}" if isinstance(v, float) else f"{k}={v}" for k, v in out.items())
    if errs or warm_errs:
        line += " err=" + (errs or warm_errs)[0].replace(" ", "_")
    print(line, flush=True)


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        chunks = int(sys.argv[3]) if len(sys.argv) > 3 else 20
        interval = (float(sys.argv[4]) if len(sys.argv) > 4 else 50.0) / 1000
        asyncio.run(serve(int(sys.argv[2]), chunks, interval))
    elif len(sys.argv) >= 6 and sys.argv[1] == "client":
        chunks = int(sys.argv[6]) if len(sys.argv) > 6 else 20
        warmup = int(sys.argv[7]) if len(sys.argv) > 7 else 1
        asyncio.run(client(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), chunks, warmup))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
