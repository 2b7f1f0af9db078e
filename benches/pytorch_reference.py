#!/usr/bin/env python3
"""The PyTorch side of lorafuse's train-step bench (benches/train_step.rs): the same LoRA
training step on the same UNet, as people run it today.

diffusers' UNet2DConditionModel (SD1.5's configuration with random weights, or a diffusers
folder such as tests/fixtures/tiny-sd15-diffusers), peft LoRA adapters on kohya's default
targets (proj_in, proj_out, attn1/attn2 to_q/to_k/to_v/to_out.0, ff.net.0.proj, ff.net.2: 192
modules on SD1.5), rank r and alpha r, adapters in float32; on a GPU the frozen weights in
float16 under fp16 autocast with a gradient scaler and SDPA attention (diffusers' default
processor on torch 2); the loss is the MSE between predicted and drawn noise; AdamW on the
adapters. Per (batch, rank) configuration, with and without gradient checkpointing: the median
step time after warm-up, samples per second, torch.cuda.max_memory_allocated and
max_memory_reserved, and the driver's peak used memory (total - free, CUDA context included).

    python benches/pytorch_reference.py --device cuda --configs 1x8,4x8,1x32,4x32 --json out.json
    python benches/pytorch_reference.py --device cpu --model tests/fixtures/tiny-sd15-diffusers
    python benches/pytorch_reference.py --device cpu --cpu-bf16 --res 256 --configs 1x8 --flops

On the CPU the step runs in f32, or with --cpu-bf16 under torch's CPU autocast in bfloat16 (the
frozen weights stay f32 and autocast casts them at every op: its cache keeps only leaf tensors
that require grad); --flops counts one step's FLOP, --gemm-peak measures the 4096^3 matmul rate.

Needs torch, diffusers and peft. scripts/bench-vs-pytorch.sh runs it beside lorafuse's bench.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

TARGETS = (
    r".*attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\."
    r"(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2))"
)

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)


def load_unet(model: str | None):
    from diffusers import UNet2DConditionModel

    if model:
        return UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    torch.manual_seed(1)
    return UNet2DConditionModel(**SD15_UNET)


def add_lora(unet, rank: int):
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=True)
    unet = inject_adapter_in_model(cfg, unet)
    params = []
    for name, p in unet.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()
            p.requires_grad_(True)
            params.append(p)
        else:
            p.requires_grad_(False)
    modules = sum(1 for n, _ in unet.named_modules() if n.endswith("lora_A"))
    return params, modules


def remove_lora(unet):
    from peft.tuners.tuners_utils import BaseTunerLayer

    for m in unet.modules():
        if isinstance(m, BaseTunerLayer):
            m.delete_adapter("default")
    if hasattr(unet, "peft_config"):
        del unet.peft_config


def precision(dev, args) -> str:
    if dev.type == "cuda":
        return "fp16 autocast"
    return "bf16 autocast" if args.cpu_bf16 else "f32"


def autocast(dev, args):
    """fp16 autocast on a GPU; on the CPU bf16 autocast with --cpu-bf16 (what accelerate runs
    for mixed_precision = "bf16" there), else plain f32."""
    if dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.cpu_bf16)


def has_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512_BF16 or AMX), as /proc/cpuinfo says."""
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def gemm_peak(dtype, n=4096, reps=3) -> float:
    """The machine's measured GEMM rate: GFLOP/s of an n^3 torch.matmul, best of `reps`."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def bench(args, unet, dev, batch, rank, checkpointing):
    cuda = dev.type == "cuda"
    params, modules = add_lora(unet, rank)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()
    unet.train()
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    lat = args.res // 8
    dtype = torch.float16 if cuda else torch.float32
    g = torch.Generator(device="cpu").manual_seed(5)
    latents = torch.randn(batch, 4, lat, lat, generator=g).to(dev, dtype)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g).to(dev, dtype)
    alphas = torch.linspace(0.9999, 0.0047, 1000, dtype=torch.float64)  # about SD1.5's ᾱ
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times, used, flops = [], 0, None
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        t = torch.randint(0, 1000, (batch,), generator=g)
        a = alphas[t].sqrt().to(dev, torch.float32).view(-1, 1, 1, 1)
        s = (1 - alphas[t]).sqrt().to(dev, torch.float32).view(-1, 1, 1, 1)
        noise = torch.randn(latents.shape, generator=g).to(dev, dtype)
        noisy = (a * latents.float() + s * noise.float()).to(dtype)
        if i == 0 and args.flops:
            from torch.utils.flop_counter import FlopCounterMode
            counter = FlopCounterMode(display=False)
        else:
            counter = contextlib.nullcontext()
        with counter:
            with autocast(dev, args):
                pred = unet(noisy, t.to(dev), context).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
            scaler.scale(loss).backward()
        if i == 0 and args.flops:
            flops = counter.get_total_flops()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
            free, total = torch.cuda.mem_get_info()
            used = max(used, total - free)
        if i >= args.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times)
    row = {
        "batch": batch,
        "rank": rank,
        "gradient_checkpointing": checkpointing,
        "lora_modules": modules,
        "ms_per_step": round(ms, 3),
        "samples_per_s": round(batch * 1e3 / ms, 4),
        "max_memory_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "max_memory_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None,
        "driver_used_peak_bytes": used if cuda else None,
        "precision": precision(dev, args),
        "gflop_per_step": round(flops / 1e9, 3) if flops else None,
    }
    del opt, params, latents, context
    remove_lora(unet)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", help="a diffusers folder (default: SD1.5's config, random weights)")
    ap.add_argument("--configs", default="1x8,4x8,1x32,4x32", help="BATCHxRANK,...")
    ap.add_argument("--res", type=int, default=None, help="pixels (default 512, or the model's)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--no-checkpointing-runs", action="store_true",
                    help="only the runs without gradient checkpointing")
    ap.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    ap.add_argument("--cpu-bf16", action="store_true",
                    help="on the CPU, the step under torch.autocast('cpu', bfloat16)")
    ap.add_argument("--flops", action="store_true",
                    help="count the first step's FLOP (torch.utils.flop_counter)")
    ap.add_argument("--gemm-peak", action="store_true",
                    help="also measure 4096^3 matmul GFLOP/s in f32 and bf16 (CPU)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    unet = load_unet(args.model)
    if args.res is None:
        args.res = unet.config.sample_size * 8 if args.model else 512
    if dev.type == "cuda":
        unet = unet.half()
    unet = unet.to(dev)
    print(f"torch {torch.__version__}, {args.device}, {args.res}x{args.res}, "
          f"loaded in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    for c in args.configs.split(","):
        b, r = (int(v) for v in c.split("x"))
        for ckpt in (False,) if args.no_checkpointing_runs else (False, True):
            row = bench(args, unet, dev, b, r, ckpt)
            mem = row["max_memory_allocated_bytes"]
            print(f"batch {b} rank {r:2d} checkpointing {ckpt!s:5}: {row['ms_per_step']:8.2f} ms/step, "
                  f"{row['samples_per_s']:7.2f} samples/s, {row['lora_modules']} LoRA modules"
                  + (f", max allocated {mem / 2**20:.1f} MiB" if mem else ""), flush=True)
            rows.append(row)
    out = {
        "bench": "pytorch_reference",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "model": args.model or "sd15 (random weights)",
        "resolution": args.res,
        "results": rows,
    }
    if args.gemm_peak:
        # Without AVX512_BF16 (or AMX) torch's bf16 matmul is a scalar fallback at well under
        # 1 GFLOP/s: minutes for one 4096^3 product, and no goal is measured there.
        dtypes = ("float32", "bfloat16") if has_cpu_bf16() else ("float32",)
        out["gemm_peak_gflops"] = {d: round(gemm_peak(getattr(torch, d)), 1) for d in dtypes}
        print(f"GEMM 4096^3: {out['gemm_peak_gflops']} GFLOP/s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
