"""Where device time goes: the largest operations of a `jax.profiler` trace."""

from __future__ import annotations

import collections
import gzip
import json
import pathlib


def top_ops(trace_dir: pathlib.Path, n: int = 30):
    """Largest total durations by event name on device threads of a Perfetto trace."""
    path = next(trace_dir.rglob("perfetto_trace.json.gz"))
    events = json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]
    names = {
        (e["pid"], e.get("tid")): e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") in ("process_name", "thread_name")
    }
    pid_names = {
        e["pid"]: e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }

    def where(e):
        return (pid_names.get(e["pid"], "") + " " + names.get((e["pid"], e.get("tid")), "")).lower()

    timed = [e for e in events if e.get("ph") == "X" and "dur" in e]
    device = [e for e in timed if "gpu" in where(e) or "stream" in where(e)]
    # No device threads (a CPU run): XLA's worker threads, not the Python thread.
    chosen = device or [e for e in timed if "python" not in where(e)]
    total = collections.Counter()
    count = collections.Counter()
    for e in chosen:
        total[e["name"]] += e["dur"]
        count[e["name"]] += 1
    top = [(name, us / 1e3, count[name]) for name, us in total.most_common(n)]
    busy_ms = sum(total.values()) / 1e3
    return top, {"device_ops_2_steps": sum(count.values()), "device_busy_ms_2_steps": busy_ms}
