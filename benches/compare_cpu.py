#!/usr/bin/env python3
"""The CPU ratio table of issue 19: lorafuse in f32 and with `cpu_precision: bf16` against
PyTorch in f32 and under bf16 CPU autocast, the same training step on the same machine in one
run (scripts/bench-vs-pytorch.sh cpu-bf16 runs the four benches and then this).

    python benches/compare_cpu.py DIR OUT.json

DIR holds lorafuse-f32.json, lorafuse-bf16.json (benches/train_step.rs), pytorch-f32.json,
pytorch-bf16.json (benches/pytorch_reference.py, the f32 one with --flops --gemm-peak) and
optionally rss-<side>.txt (peak RSS in KiB, /usr/bin/time's %M). GFLOP/s = PyTorch's FLOP count
of one step (torch.utils.flop_counter: forward and backward, the same work on both sides) /
the side's median step time; "% of peak" sets it against the machine's 4096^3 matmul rate in
the side's precision.
"""

import json
import os
import sys

SIDES = ("lorafuse-f32", "lorafuse-bf16", "pytorch-f32", "pytorch-bf16")


def main():
    d, out_path = sys.argv[1:3]
    # the bf16 sides are absent on a CPU without AVX512_BF16 (the script runs f32 only there)
    data = {s: json.load(open(os.path.join(d, s + ".json"))) for s in SIDES
            if s.endswith("f32") or os.path.exists(os.path.join(d, s + ".json"))}
    rss = {}
    for s in SIDES:
        p = os.path.join(d, f"rss-{s}.txt")
        if os.path.exists(p):
            rss[s] = int(open(p).read().split()[-1]) * 1024
    peak = data["pytorch-f32"].get("gemm_peak_gflops", {})
    peaks = {"f32": peak.get("float32"), "bf16": peak.get("bfloat16")}
    rows = {}
    for s in data:
        for r in data[s]["results"]:
            if r.get("gradient_checkpointing"):
                continue
            rows.setdefault((r["batch"], r["rank"]), {})[s] = r
    flops = {k: v["pytorch-f32"].get("gflop_per_step") for k, v in rows.items()}
    table = []
    for key, sides in sorted(rows.items()):
        gf = flops[key]
        row = {"batch": key[0], "rank": key[1], "gflop_per_step": gf}
        for s, r in sides.items():
            prec = s.split("-")[1]
            rate = gf / (r["ms_per_step"] / 1e3) if gf else None
            row[s] = {
                "ms_per_step": r["ms_per_step"],
                "samples_per_s": r["samples_per_s"],
                "gflops": rate and round(rate, 1),
                "of_gemm_peak": rate and peaks[prec] and round(rate / peaks[prec], 3),
                "peak_rss_bytes": rss.get(s),
            }
        sp = {s: sides[s]["samples_per_s"] for s in sides}
        for a, b in (("lorafuse-f32", "pytorch-f32"), ("lorafuse-bf16", "pytorch-bf16"),
                     ("lorafuse-bf16", "pytorch-f32"), ("lorafuse-bf16", "lorafuse-f32")):
            if a in sp and b in sp:
                row[f"{a}/{b}"] = round(sp[a] / sp[b], 3)
        table.append(row)
    lf = data["lorafuse-f32"]
    out = {
        "model": lf["model"] if "model" in lf else None,
        "resolution": lf["resolution"],
        "device": lf["device"],
        "torch": data["pytorch-f32"].get("torch"),
        "gemm_peak_gflops": peaks,
        "configs": table,
    }
    with open(out_path, "w") as f:
        json.dump(out, f, indent=2)
    print(f"\nCPU, {out['resolution']}px, {lf['device']}; torch {out['torch']}; "
          f"GEMM 4096^3: f32 {peaks['f32']} GFLOP/s, bf16 {peaks['bf16']} GFLOP/s")
    print("| batch x rank | GFLOP/step | side | ms/step | GFLOP/s | of GEMM peak | peak RSS |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in table:
        for s in SIDES:
            if s not in r:
                continue
            x = r[s]
            m = x["peak_rss_bytes"]
            print(f"| {r['batch']}x{r['rank']} | {r['gflop_per_step']} | {s} | {x['ms_per_step']:.0f} | "
                  f"{x['gflops']} | {x['of_gemm_peak']} | {'-' if m is None else f'{m / 1e9:.2f} GB'} |")
    print("\n| batch x rank | lorafuse f32 / PyTorch f32 | lorafuse bf16 / PyTorch bf16 | "
          "lorafuse bf16 / PyTorch f32 | lorafuse bf16 / lorafuse f32 |")
    print("|---|---:|---:|---:|---:|")
    for r in table:
        print(f"| {r['batch']}x{r['rank']} | {r.get('lorafuse-f32/pytorch-f32')} | "
              f"{r.get('lorafuse-bf16/pytorch-bf16')} | {r.get('lorafuse-bf16/pytorch-f32')} | "
              f"{r.get('lorafuse-bf16/lorafuse-f32')} |")


if __name__ == "__main__":
    main()
