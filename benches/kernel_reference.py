#!/usr/bin/env python3
"""PyTorch's time for the ops benches/cuda_ops.rs times, at the same SD1.5 shapes in float16,
and the device's measured ceilings, then the joined table: lorafuse's fast kernels, their
simple twins, PyTorch (cuBLAS for the GEMMs, cuDNN for the convolutions, SDPA for attention),
and each fast kernel's fraction of the measured ceiling.

    python benches/kernel_reference.py --ours bench-cuda_ops.json --json kernel_reference.json

Ceilings: the best of several large fp16 matmuls (cuBLAS, f32 accumulation: the dense fp16 rate
this GPU reaches in practice) and a 1 GiB device-to-device copy (bytes read + written per
second). The GEMM rows compare x·Wᵀ at the LoRA-free shape (cuBLAS) with lorafuse's linear with
its LoRA term fused (its work counts the LoRA products too); attention compares SDPA's forward
and forward+backward with lorafuse's forward and backward.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F


def timed(f, reps=20):
    f()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ms = []
    for _ in range(reps):
        start.record()
        f()
        end.record()
        torch.cuda.synchronize()
        ms.append(start.elapsed_time(end))
    ms.sort()
    return ms[len(ms) // 2]


def ceilings():
    best = 0.0
    for n in (4096, 8192):
        a = torch.randn(n, n, device="cuda", dtype=torch.float16)
        b = torch.randn(n, n, device="cuda", dtype=torch.float16)
        ms = timed(lambda: a @ b)
        best = max(best, 2 * n**3 / (ms * 1e-3) / 1e12)
    x = torch.empty(1 << 29, device="cuda", dtype=torch.float16)
    y = torch.empty_like(x)
    ms = timed(lambda: y.copy_(x))
    gbs = 2 * x.numel() * 2 / (ms * 1e-3) / 1e9
    return {"fp16_matmul_tflops": round(best, 1), "copy_gbs": round(gbs, 1)}


def rows():
    h = dict(device="cuda", dtype=torch.float16)
    out = []
    for m, k, n in [(4096, 320, 320), (4096, 320, 2560), (4096, 1280, 320), (256, 1280, 1280)]:
        x, w = torch.randn(m, k, **h), torch.randn(n, k, **h)
        out.append(("linear", f"{m}x{k} -> {n}", timed(lambda: F.linear(x, w)), 2 * m * k * n, "TFLOP/s"))
    for c, hw, stride in [(320, 64, 1), (640, 32, 1), (1280, 16, 1), (320, 64, 2)]:
        x, w = torch.randn(1, c, hw, hw, **h), torch.randn(c, c, 3, 3, **h)
        ho = hw // stride
        out.append((f"conv3x3 stride {stride}", f"{c}->{c} @{hw}x{hw}",
                    timed(lambda: F.conv2d(x, w, stride=stride, padding=1)),
                    2 * c * ho * ho * c * 9, "TFLOP/s"))
    for lq, lk, heads, d, what in [(4096, 4096, 8, 40, "self-attention level 1"),
                                   (4096, 77, 8, 40, "cross-attention level 1"),
                                   (1024, 1024, 8, 80, "self-attention level 2")]:
        q = torch.randn(1, heads, lq, d, **h, requires_grad=True)
        k = torch.randn(1, heads, lk, d, **h, requires_grad=True)
        v = torch.randn(1, heads, lk, d, **h, requires_grad=True)
        flop = 4 * heads * lq * lk * d
        out.append((f"{what} forward", f"{lq}x{lk}, {heads}x{d}",
                    timed(lambda: F.scaled_dot_product_attention(q, k, v)), flop, "TFLOP/s"))
        o = F.scaled_dot_product_attention(q, k, v)
        do = torch.randn_like(o)
        fb = timed(lambda: F.scaled_dot_product_attention(q, k, v).backward(do))
        out.append((f"{what} backward", f"{lq}x{lk}, {heads}x{d}", fb - out[-1][2], 2.5 * flop, "TFLOP/s"))
    x = torch.randn(1, 320, 64, 64, **h)
    g, b = torch.randn(320, **h), torch.randn(320, **h)
    out.append(("group_norm+silu", "320ch 64x64", timed(lambda: F.silu(F.group_norm(x, 32, g, b))),
                4 * x.numel(), "GB/s"))
    t = torch.randn(4096, 320, **h)
    out.append(("layer_norm", "4096x320", timed(lambda: F.layer_norm(t, (320,), g, b)), 4 * t.numel(), "GB/s"))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ours", help="benches/cuda_ops.rs's BENCH_JSON output, to join")
    ap.add_argument("--json", help="write PyTorch's figures (and the joined table) here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("SKIPPED: no CUDA device")
        return
    ceil = ceilings()
    ref = rows()
    print(f"{torch.cuda.get_device_name()}: fp16 matmul ceiling {ceil['fp16_matmul_tflops']} TFLOP/s, "
          f"copy {ceil['copy_gbs']} GB/s (torch {torch.__version__})")
    joined = []
    ours = json.load(open(args.ours))["rows"] if args.ours else []
    print(f"{'op':<34} {'shape':<22} {'fast ms':>8} {'simple':>8} {'torch':>8} {'vs torch':>8} {'% ceiling':>9}")
    for name, shape, ms, work, unit in ref:
        mine = next((r for r in ours if r["shape"] == shape and r["kernel"].startswith(name.split(" forward")[0].split(" backward")[0])
                     and (("backward" in r["kernel"]) == ("backward" in name))
                     and (("input grad" in r["kernel"]) == ("input grad" in name))), None)
        ceiling = ceil["fp16_matmul_tflops"] * 1e12 if unit == "TFLOP/s" else ceil["copy_gbs"] * 1e9
        row = {"op": name, "shape": shape, "torch_ms": round(ms, 4), "work": work, "unit": unit}
        if mine:
            rate = mine["work"] / (mine["fast_ms"] * 1e-3)
            row.update(fast_ms=mine["fast_ms"], simple_ms=mine["simple_ms"],
                       speedup_vs_torch=round(ms / mine["fast_ms"], 3),
                       fraction_of_ceiling=round(rate / ceiling, 3))
        joined.append(row)
        f = lambda k: f"{row[k]:8.3f}" if k in row else "       -"
        print(f"{name:<34} {shape:<22} {f('fast_ms')} {f('simple_ms')} {ms:8.3f} "
              f"{row.get('speedup_vs_torch', '-')!s:>8} {row.get('fraction_of_ceiling', '-')!s:>9}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "ceilings": ceil, "rows": joined}, fh, indent=2)


if __name__ == "__main__":
    main()
