#!/usr/bin/env python3
"""torch.nn.functional.scaled_dot_product_attention at Llama-3-8B's attention
shapes (32 query heads over 8 KV heads, head_dim 128, fp16, K/V contiguous):
the baselines that bench/cuda_report.py sets our kernels against.
- decode: one query per sequence, on the grid of paged_decode_cuda_bench's
  BM_DecodeDense (batch 1-64 x context 1k-128k, K/V capped at 16 GiB).
  Bandwidth is over the K/V bytes a GQA-aware kernel must read, whatever
  torch's kernel reads (where enable_gqa is missing, K/V are repeated per
  query head beforehand and torch reads four times as much).
- prefill: a chunk of 1024 queries at the end of a 4k-32k context, each
  query seeing the keys up to its own position (causal from the bottom
  right), as paged_prefill_cuda_bench's BM_PrefillDense; TFLOP/s over the
  same count (Q·Kᵀ and P·V over the keys each query sees).

Each case is timed with CUDA events around each of back-to-back calls, as the
C++ benchmarks time them, after warmup; the median is kept. Torch's own
dispatch gives `us`; every SDPA backend that takes the case is timed too.
Needs python3 and torch on a CUDA machine; exits 0 with the reason
otherwise. Usage:
  python3 bench/torch_attention.py [--out PATH] [--reps 20]
"""
import argparse
import json
import re
import statistics
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
Q_HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
BATCHES = (1, 8, 64)
CONTEXTS = (1024, 4096, 16384, 32768, 131072)
MAX_KV_BYTES = 16 << 30
PREFILL_CHUNK = 1024
PREFILL_CONTEXTS = (4096, 16384, 32768)


def median_us(torch, fn, reps, warmup=3):
    for _ in range(warmup):
        fn()
    events = [torch.cuda.Event(enable_timing=True) for _ in range(reps + 1)]
    events[0].record()
    for e in events[1:]:
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in zip(events, events[1:])) * 1e3


def copy_bandwidth(torch):
    """Device-to-device copy of 1 GiB, read + write, as cuda_bench_util.h measures it."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    us = median_us(torch, lambda: b.copy_(a), 10, warmup=1)
    return 2 * a.numel() / (us * 1e-6) / 1e9


def gqa_supported(torch, F):
    q = torch.zeros(1, 4, 1, 64, dtype=torch.float16, device="cuda")
    kv = torch.zeros(1, 2, 8, 64, dtype=torch.float16, device="cuda")
    try:
        F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
        return True
    except TypeError:
        return False


def backends(torch):
    """(name, context manager factory) for each SDPA backend this torch can force."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return []
    # MATH is left out: unfused, it is no baseline for our kernels.
    names = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION")
    return [(n.lower(), lambda b=getattr(SDPBackend, n): sdpa_kernel(b)) for n in names if hasattr(SDPBackend, n)]


def time_backends(torch, call, forced, reps):
    """`us` under torch's own dispatch, then under each backend that takes the call."""
    case = {"us": median_us(torch, call, reps)}
    per_backend = {}
    for name, ctx in forced:
        try:
            with ctx(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch warns each reason a backend declines
                per_backend[name] = median_us(torch, call, reps)
        except RuntimeError as e:  # the backend does not take this case
            per_backend[name] = None
            case.setdefault("backend_errors", {})[name] = str(e).splitlines()[0][:200]
    case["backend_us"] = per_backend
    timed = {n: us for n, us in per_backend.items() if us is not None}
    if timed:
        case["best_backend"] = min(timed, key=timed.get)
        case["best_us"] = timed[case["best_backend"]]
    return case


def grouped_kv(torch, batch, context, gqa):
    """Random K and V and SDPA's GQA argument; repeated per query head without it."""
    k = torch.rand(batch, KV_HEADS, context, HEAD_DIM, dtype=torch.float16, device="cuda") - 0.5
    v = torch.rand_like(k) - 0.5
    if not gqa:
        k = k.repeat_interleave(Q_HEADS // KV_HEADS, dim=1)
        v = v.repeat_interleave(Q_HEADS // KV_HEADS, dim=1)
    return k, v, ({"enable_gqa": True} if gqa else {})


def decode_case(torch, F, batch, context, gqa, forced, reps):
    q = torch.rand(batch, Q_HEADS, 1, HEAD_DIM, dtype=torch.float16, device="cuda") - 0.5
    k, v, kwargs = grouped_kv(torch, batch, context, gqa)
    return time_backends(torch, lambda: F.scaled_dot_product_attention(q, k, v, **kwargs), forced, reps)


def lower_right_causal(torch, n_queries, context):
    """The mask of a chunk at the end of the context: torch's CausalBias where
    it has one (the fused kernels take it), else a boolean mask (which only
    the unfused paths take; the case names which)."""
    try:
        from torch.nn.attention.bias import causal_lower_right
        return causal_lower_right(n_queries, context), "causal_lower_right"
    except ImportError:
        rows = torch.arange(n_queries, device="cuda")[:, None] + (context - n_queries)
        return rows >= torch.arange(context, device="cuda")[None, :], "boolean mask"


def prefill_case(torch, F, context, gqa, forced, reps):
    q = torch.rand(1, Q_HEADS, PREFILL_CHUNK, HEAD_DIM, dtype=torch.float16, device="cuda") - 0.5
    mask, how = lower_right_causal(torch, PREFILL_CHUNK, context)
    k, v, kwargs = grouped_kv(torch, 1, context, gqa)
    try:
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs)
    except (TypeError, RuntimeError):  # a mask type that does not pass enable_gqa on
        k, v, kwargs = grouped_kv(torch, 1, context, False)
    case = time_backends(torch, lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs), forced,
                         reps)
    first = context - PREFILL_CHUNK
    flops = sum(4.0 * HEAD_DIM * Q_HEADS * (first + i + 1) for i in range(PREFILL_CHUNK))
    return {"context": context, "mask": how, "gqa": "enable_gqa" if kwargs else "repeat_interleave", **case,
            "TFLOPs": flops / (case["us"] * 1e-6) / 1e12}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="default: bench/results/torch_attention-<gpu name>.json")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(f"torch_attention: skipped: no torch ({e})")
        return 0
    if not torch.cuda.is_available():
        print("torch_attention: skipped: torch sees no CUDA device")
        return 0

    gpu = torch.cuda.get_device_name()
    # The name as scripts/gpu-check.sh writes it into result file names.
    out = Path(args.out or ROOT / f"bench/results/torch_attention-{re.sub(r'[^A-Za-z0-9]', '_', gpu)}.json")
    gqa = gqa_supported(torch, F)
    forced = backends(torch)
    result = {"benchmark": "torch_attention", "gpu": gpu, "torch": torch.__version__,
              "cuda": torch.version.cuda, "gqa": "enable_gqa" if gqa else "repeat_interleave",
              "copy_GBps": copy_bandwidth(torch), "decode_cases": [], "prefill_cases": [], "skipped": []}
    print(f"{gpu}, torch {torch.__version__}, GQA by {result['gqa']}, copy {result['copy_GBps']:.0f} GB/s")
    for batch in BATCHES:
        for context in CONTEXTS:
            kv_bytes = 2 * batch * KV_HEADS * context * HEAD_DIM * 2
            if kv_bytes > MAX_KV_BYTES:
                result["skipped"].append({"batch": batch, "context": context, "reason": "K/V over 16 GiB"})
                continue
            try:
                case = decode_case(torch, F, batch, context, gqa, forced, args.reps)
            except torch.cuda.OutOfMemoryError as e:
                result["skipped"].append({"batch": batch, "context": context, "reason": str(e).splitlines()[0]})
                continue
            finally:
                torch.cuda.empty_cache()
            case = {"batch": batch, "context": context, **case, "kv_GBps": kv_bytes / (case["us"] * 1e-6) / 1e9}
            result["decode_cases"].append(case)
            print(f"decode batch {batch:3d} context {context:6d}: {case['us']:9.1f} us {case['kv_GBps']:7.0f} GB/s"
                  + (f" (best {case['best_backend']} {case['best_us']:.1f} us)" if "best_us" in case else ""),
                  flush=True)
    for context in PREFILL_CONTEXTS:
        case = prefill_case(torch, F, context, gqa, forced, args.reps)
        torch.cuda.empty_cache()
        result["prefill_cases"].append(case)
        print(f"prefill of {PREFILL_CHUNK} context {context:6d}: {case['us'] / 1e3:8.2f} ms {case['TFLOPs']:6.1f} "
              f"TFLOP/s ({case['mask']}, GQA by {case['gqa']})"
              + (f" (best {case['best_backend']} {case['best_us'] / 1e3:.2f} ms)" if "best_us" in case else ""),
              flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
