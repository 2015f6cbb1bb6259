"""Compact summary of bench/attention_gpu.py JSONL/log output (device runs)."""

import json
import sys


def lines(path):
    with open(path) as f:
        yield from f


for path in sys.argv[1:]:
    for line in lines(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if "check" in r:
            if "error" in r:
                print(f"CHECK {r['check']}: ERROR {r['error'][:300]}")
            else:
                keys = ["out_rel", "dq_rel", "dk_rel", "dv_rel", "lse_max_abs"]
                vals = " ".join(f"{k}={r[k]:.2e}" for k in keys if k in r)
                print(
                    f"CHECK {r['check']}: {vals} dead={r['dead_rows']}/{r['dead_ok']}"
                    f" t={r.get('fwd_first_call_s')}/{r.get('bwd_first_call_s')}"
                )
        elif "tune" in r:
            print(
                f"TUNE {r['tune']} {r['kind']} {r['cfg']}: "
                + (f"{r['ms']} ms {r['tflops']} TF" if "ms" in r else r["error"][:300])
            )
        elif "impl" in r:
            print(
                f"{r['impl']:8s} {r['kind']:15s} S={r['S']}: "
                + (
                    f"{r['ms']} ms {r['tflops']} TF (first {r.get('first_call_s')}s)"
                    if "ms" in r
                    else "ERROR " + r["error"][:300]
                )
            )
        else:
            print(line[:300])
