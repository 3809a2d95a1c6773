#!/usr/bin/env python3
"""Idle keep-alive memory: opens N client connections to a proxy, makes one chat call on each
(so every connection has served a request and now sits idle in keep-alive, as an SDK's pool
does), holds them all open, and prints the proxy's RSS before and after (summed over the pids
given, e.g. nginx's worker).

usage: idle_conns.py HOST:PORT PATH N PID [PID...]
prints one line: "<N ok> <rss_before_kib> <rss_after_kib> <kib_per_conn> <still_open> <fds>"
where still_open counts the connections the proxy had not closed when RSS was read, and fds the
open file descriptors of the pids at that moment.
"""
import asyncio
import os
import resource
import sys

BODY = (b'{"model":"gpt-4.1","messages":[{"role":"user","content":"Say hello in one short sentence."}],'
        b'"max_tokens":16}')


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def fd_count(pids):
    return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids)


async def one(host, port, path, held, sem):
    async with sem:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            req = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY
            writer.write(req)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if length:
                await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                return False
            held.append((reader, writer))
            return True
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return False


async def main():
    target, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pids = [int(p) for p in sys.argv[4:]]
    host, port = target.rsplit(":", 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1024), hard))
    before = rss_kib(pids)
    held = []
    sem = asyncio.Semaphore(256)  # connect in waves, like a pool filling up
    results = await asyncio.gather(*(one(host, int(port), path, held, sem) for _ in range(n)))
    await asyncio.sleep(1.0)  # let the proxy settle (idle state reached, buffers released)
    after = rss_kib(pids)
    fds = fd_count(pids)
    still_open = sum(1 for r, w in held if not r.at_eof() and not w.is_closing())
    ok = sum(results)
    per = (after - before) / ok if ok else 0.0
    print(f"{ok} {before} {after} {per:.2f} {still_open} {fds}")
    for _, w in held:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
