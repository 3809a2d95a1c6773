#!/usr/bin/env python3
"""Sub-10-minute test series for the forecaster (forecast/RESULTS.md sections 18 and 20).

No long public trace at one-minute bins is at hand, so these are built from the ServeGen
10-minute series (shared/data/series) and a synthetic cycle, into OUT_DIR:

  split_<name>_1m.csv   each 10-minute count split over its 10 minutes by random weights
                        (gamma(20) shares, a multinomial draw): the 10-minute sums are the real
                        series exactly, the minutes add realistic counting noise
  spread_<name>_1m.csv  section 18's series: linear between 10-minute bins (which smooths
                        with the next bin: a look-ahead that lowers the next-bin error), x
                        lognormal(0, 0.1), Poisson-like noise; 14 days
  spread_<name>_5m.csv  the same at 5-minute bins, the whole series
  synth_1m.csv          daily sine, weekend at 0.6x, rare x8 spikes, 1 % gaps; 14 days

usage: python3 bench/forecast_minute_series.py OUT_DIR [SERIES_DIR]
then:  build/tollgate-forecast backtest --input OUT_DIR/<file> --column requests --horizons 1h,24h
"""
import csv
import math
import os
import random
import sys


def rows_of(series_dir, name):
    with open(os.path.join(series_dir, name + ".csv")) as f:
        return [(int(r["timestamp"]), r["requests"]) for r in csv.DictReader(f)]


def write(path, pairs):
    with open(path, "w") as f:
        f.write("timestamp,requests\n")
        for t, v in pairs:
            f.write(f"{t},{v}\n")


def split(rows, rng):
    for t, v in rows:
        if v == "":
            yield from ((t + 60 * j, "") for j in range(10))
            continue
        left = int(float(v))
        w = [rng.gammavariate(20, 1) for _ in range(10)]
        total = sum(w)
        rest = 1.0
        for j in range(10):
            if j == 9:
                x = left
            else:
                p = w[j] / total / rest
                if left > 1000:
                    x = round(rng.gauss(left * p, math.sqrt(left * p * (1 - p))))
                else:
                    x = sum(1 for _ in range(left) if rng.random() < p)
                x = min(max(x, 0), left)
                rest -= w[j] / total
            left -= x
            yield t + 60 * j, x


def spread(rows, parts, rng):
    step = 600 // parts
    for i, (t, v) in enumerate(rows):
        if v == "":
            yield from ((t + step * j, "") for j in range(parts))
            continue
        v = float(v)
        nxt = rows[i + 1][1] if i + 1 < len(rows) and rows[i + 1][1] != "" else v
        nxt = float(nxt)
        for j in range(parts):
            level = (v + (nxt - v) * j / parts) / parts * math.exp(rng.gauss(0, 0.1))
            yield t + step * j, max(0, round(level + rng.gauss(0, math.sqrt(max(level, 1)))))


def synth(rng, t0=1736121600, days=14):
    for i in range(days * 1440):
        level = 200 * (1 + 0.6 * math.sin(2 * math.pi * (i % 1440) / 1440 - 1.5))
        if (i // 1440) % 7 in (5, 6):
            level *= 0.6
        if rng.random() < 0.002:
            level *= 8
        if rng.random() < 0.01:
            yield t0 + 60 * i, ""
            continue
        yield t0 + 60 * i, max(0, round(level + rng.gauss(0, math.sqrt(level))))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    series_dir = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "series")
    os.makedirs(out, exist_ok=True)
    for short, name in (("mlarge", "servegen_mlarge_10m"), ("msmall", "servegen_msmall_10m")):
        rows = rows_of(series_dir, name)
        write(os.path.join(out, f"split_{short}_1m.csv"), split(rows, random.Random(12)))
        write(os.path.join(out, f"spread_{short}_1m.csv"), spread(rows[:14 * 144], 10, random.Random(7)))
        write(os.path.join(out, f"spread_{short}_5m.csv"), spread(rows, 2, random.Random(9)))
    write(os.path.join(out, "synth_1m.csv"), synth(random.Random(7)))


if __name__ == "__main__":
    main()
