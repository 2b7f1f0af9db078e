#!/usr/bin/env python3
"""Joins benches/train_step.rs's JSON (lorafuse) and benches/pytorch_reference.py's JSON into
one results file with the ratios per (batch, rank), and prints the ratio table last.

    python benches/compare_results.py LORAFUSE.json PYTORCH.json OUT.json

vram_ratio = lorafuse pool peak / PyTorch max_memory_allocated without checkpointing;
vram_ratio_vs_checkpointing = the same against the checkpointed run; driver_vram_ratio compares
the driver's used-memory peaks (contexts included); speed_ratio = lorafuse samples/s / PyTorch
samples/s without checkpointing (> 1: lorafuse is faster).
"""

import json
import sys


def main():
    lf_path, pt_path, out_path = sys.argv[1:4]
    lf = json.load(open(lf_path))
    pt = json.load(open(pt_path))
    ptrows = {(r["batch"], r["rank"], r["gradient_checkpointing"]): r for r in pt["results"]}
    rows = []
    for r in lf["results"]:
        key = (r["batch"], r["rank"])
        plain, ckpt = ptrows.get(key + (False,)), ptrows.get(key + (True,))

        def ratio(a, b):
            return round(a / b, 4) if a is not None and b else None

        peak = r.get("pool_peak_bytes")
        rows.append({
            "batch": key[0],
            "rank": key[1],
            "gpu": lf["device"],
            "lorafuse": r,
            "pytorch": plain,
            "pytorch_checkpointing": ckpt,
            "vram_ratio": ratio(peak, plain and plain["max_memory_allocated_bytes"]),
            "vram_ratio_vs_checkpointing": ratio(peak, ckpt and ckpt["max_memory_allocated_bytes"]),
            "driver_vram_ratio": ratio(r.get("driver_used_peak_bytes"),
                                       plain and plain["driver_used_peak_bytes"]),
            "speed_ratio": ratio(r["samples_per_s"], plain and plain["samples_per_s"]),
            "speed_ratio_vs_checkpointing": ratio(r["samples_per_s"], ckpt and ckpt["samples_per_s"]),
            "plan_over_measured": r.get("plan_over_measured"),
        })
    out = {"gpu": lf["device"], "torch": pt.get("torch"), "resolution": lf["resolution"], "configs": rows}
    with open(out_path, "w") as f:
        json.dump(out, f, indent=2)
    mib = lambda b: "-" if b is None else f"{b / 2**20:8.0f}"
    print(f"\nlorafuse vs PyTorch on {lf['device']} at {lf['resolution']}px "
          f"(ratios: lorafuse / PyTorch; targets vram <= 0.5, vram vs ckpt <= 1, speed >= 1)")
    print(" batch rank | lorafuse MiB  torch MiB  ckpt MiB | vram  vs-ckpt | ms lorafuse   torch | speed | plan/meas")
    for c in rows:
        lf_r, p, k = c["lorafuse"], c["pytorch"] or {}, c["pytorch_checkpointing"] or {}
        print(f" {c['batch']:5d} {c['rank']:4d} | {mib(lf_r.get('pool_peak_bytes'))}   "
              f"{mib(p.get('max_memory_allocated_bytes'))}  {mib(k.get('max_memory_allocated_bytes'))} | "
              f"{c['vram_ratio']!s:5} {c['vram_ratio_vs_checkpointing']!s:7} | "
              f"{lf_r['ms_per_step']:11.2f} {p.get('ms_per_step', float('nan')):7.2f} | "
              f"{c['speed_ratio']!s:5} | {c['plan_over_measured']}")


if __name__ == "__main__":
    main()
