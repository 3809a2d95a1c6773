#!/usr/bin/env python3
"""Load for the ledger durability test (sigkill.sh): a few keep-alive client threads call
tollgate's chat completions (plain and streamed, alternately) and, after --signal-after seconds,
the driver sends --signal to --pid and stops issuing calls.

Writes a JSON file: {"signal_at": 0, "calls": [[request_id, done_s], ...]} with one entry per
call answered 200 with its whole body; done_s is when the answer was complete, in seconds
relative to the signal (negative: before it). Standard library only.
"""
import argparse
import http.client
import json
import os
import signal
import threading
import time
import urllib.parse


def worker(base, stop, out, lock, index):
    url = urllib.parse.urlsplit(base)
    conn = None
    n = 0
    while not stop.is_set():
        n += 1
        stream = (index + n) % 2 == 0
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hello {index} {n}"}]}
        if stream:
            body["stream"] = True
        try:
            if conn is None:
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
            conn.request("POST", url.path.rstrip("/") + "/chat/completions", json.dumps(body),
                         {"content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            done = time.monotonic()
            if resp.status == 200 and resp.getheader("x-request-id"):
                with lock:
                    out.append((resp.getheader("x-request-id"), done))
            if resp.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException):
            # tollgate gone (killed or draining): no answer, so nothing the ledger owes us.
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.01)
    if conn is not None:
        conn.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True, help="tollgate base URL, e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--signal", choices=["KILL", "TERM"], required=True)
    p.add_argument("--signal-after", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    stop = threading.Event()
    lock = threading.Lock()
    calls = []
    threads = [threading.Thread(target=worker, args=(a.url, stop, calls, lock, i)) for i in range(a.threads)]
    for t in threads:
        t.start()
    time.sleep(a.signal_after)
    signal_at = time.monotonic()
    os.kill(a.pid, getattr(signal, "SIG" + a.signal))
    stop.set()  # calls in flight finish (SIGTERM drains them); no new ones start
    for t in threads:
        t.join()
    with open(a.out, "w") as f:
        json.dump({"signal_at": 0, "calls": [[rid, round(done - signal_at, 6)] for rid, done in calls]}, f)
    print(f"load.py: {len(calls)} calls answered, SIG{a.signal} sent after {a.signal_after}s")


if __name__ == "__main__":
    main()
