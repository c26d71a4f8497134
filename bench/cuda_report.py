#!/usr/bin/env python3
"""Tables of the GPU benchmarks against DESIGN.md §7's targets, from what
scripts/gpu-check.sh leaves in bench/results/ for one GPU:
  paged_decode_cuda_bench-<gpu>.json   decode attention (dense, mixed policies, Quest)
  torch_attention-<gpu>.json           torch's SDPA on the dense decode and prefill shapes
  engine_decode_cuda_bench-<gpu>.json  whole decode steps
  engine_load_cuda_bench-<gpu>.json    the engine under 64-256 concurrent requests
  paged_prefill_cuda_bench-<gpu>.json  prefill attention on the tensor cores
  step_metadata_bench.json  the host's staging of a decode step (any machine)
and bench/results/cuda_decode.png. Exits 0 with a note when there are none.
Usage:
  .venv/bin/python bench/cuda_report.py [--results DIR] [--gpu NAME] [--png PATH]
"""
import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LONG_CONTEXT = 32768  # "at long context": the bandwidth target applies from here
TARGETS = {"bandwidth": 0.8, "quest": 5.0, "mixed": 0.9, "roofline": 0.85}


def gbench_runs(path):
    """{family: {args tuple: run}} of a Google Benchmark JSON; skipped runs keep their message."""
    runs = {}
    text = path.read_text()
    # A run whose filter matched none of its cases leaves an empty file.
    for b in (json.loads(text) if text.strip() else {}).get("benchmarks", []):
        if b.get("run_type", "iteration") != "iteration":
            continue
        family, *parts = b["name"].split("/")
        args = []
        for p in parts:
            if p.startswith("iterations:") or p.endswith("_time"):
                continue
            args.append(int(p.split(":")[-1]) if re.fullmatch(r"(\w+:)?\d+", p) else p)
        runs.setdefault(family, {})[tuple(args)] = b
    return runs


def ok(run):
    return run is not None and not run.get("error_occurred") and not run.get("skipped")


def verdict(value, target):
    return "met" if value >= target else "**missed**"


def dense_table(decode, torch):
    dense = decode.get("BM_DecodeDense", {})
    torch_cases = {(c["batch"], c["context"]): c for c in (torch or {}).get("decode_cases", [])}
    head = ["batch", "context", "us", "GB/s", "vs copy", f"§7 (>= {TARGETS['bandwidth']}, >= {LONG_CONTEXT // 1024}k)"]
    if torch:
        head += ["torch us", "torch GB/s", "speedup vs torch", "vs its fastest backend"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = []
    for (batch, context), r in sorted(dense.items()):
        if not ok(r):
            out.append(f"| {batch} | {context} | {r.get('error_message', 'skipped')} |" + " |" * (len(head) - 3))
            continue
        ratio = r["ratio_to_copy"]
        cells = [batch, context, f"{r['us']:.1f}", f"{r['kv_GBps']:.0f}", f"{ratio:.2f}",
                 verdict(ratio, TARGETS["bandwidth"]) if context >= LONG_CONTEXT else "-"]
        row = {"batch": batch, "context": context, "ours": r["kv_GBps"], "copy": r["copy_GBps"]}
        if torch:
            t = torch_cases.get((batch, context))
            if t:
                best = t.get("best_us")
                cells += [f"{t['us']:.1f}", f"{t['kv_GBps']:.0f}", f"{t['us'] / r['us']:.2f}x",
                          f"{best / r['us']:.2f}x ({t['best_backend']})" if best else "-"]
                row["torch"] = t["kv_GBps"]
            else:
                cells += ["-"] * 4
        rows.append(row)
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(out), rows


def mixed_table(decode):
    dense, mixed = decode.get("BM_DecodeDense", {}), decode.get("BM_DecodeMixedPolicies", {})
    out = ["| batch | context | dense us | mixed us | mixed / dense throughput | "
           f"§7 (>= {TARGETS['mixed']}) |", "|---|---|---|---|---|---|"]
    rows = []
    for key, m in sorted(mixed.items()):
        d = dense.get(key)
        if not (ok(m) and ok(d)):
            continue
        # Same batch size: throughput is batch / time, so the ratio is of times.
        ratio = d["us"] / m["us"]
        rows.append({"batch": key[0], "context": key[1], "ratio": ratio})
        out.append(f"| {key[0]} | {key[1]} | {d['us']:.1f} | {m['us']:.1f} | {ratio:.2f} | "
                   f"{verdict(ratio, TARGETS['mixed'])} |")
    return "\n".join(out), rows


def quest_table(decode):
    quest = decode.get("BM_DecodeQuest", {})
    out = ["| batch | context | Quest us (select + decode) | select us | dense us | speedup | "
           f"§7 (>= {TARGETS['quest']:.0f}x at 32k/2048) |", "|---|---|---|---|---|---|---|"]
    rows = []
    for (batch, context), r in sorted(quest.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if not ok(r):
            out.append(f"| {batch} | {context} | {r.get('error_message', 'skipped')} | | | | |")
            continue
        s = r["speedup_vs_dense"]
        rows.append({"batch": batch, "context": context, "speedup": s})
        target = verdict(s, TARGETS["quest"]) if context == 32768 else "-"
        out.append(f"| {batch} | {context} | {r['us']:.1f} | {r['select_us']:.1f} | {r['dense_us']:.1f} | "
                   f"{s:.2f}x | {target} |")
    return "\n".join(out), rows


def engine_table(engine):
    """Decode steps: batch 1 against the roofline, graphs against kernel-by-kernel launches, mixed policies
    against the dense batch (runs keyed (model, batch, graphs, mixed))."""
    runs = engine.get("BM_Decode", {})
    out = ["| model | batch | graphs | policies | step ms | tokens/s | vs roofline | graphs speedup | vs dense | "
           f"§7 (batch 1 >= {TARGETS['roofline']} of the roofline, mixed >= {TARGETS['mixed']} of dense) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for (model, batch, graphs, mixed), r in sorted(runs.items()):
        policies = "mixed" if mixed else "dense"
        if not ok(r):
            out.append(f"| {model} | {batch} | {graphs} | {policies} | {r.get('error_message', 'skipped')} "
                       "| | | | | |")
            continue
        ratio = r["ratio_to_roofline"]
        eager = runs.get((model, batch, 0, mixed))
        speedup = f"{eager['step_ms'] / r['step_ms']:.2f}x" if graphs and ok(eager) else "-"
        dense = runs.get((model, batch, graphs, 0))
        vs_dense, target = "-", "-"
        if mixed and ok(dense):
            v = r["tokens_per_s"] / dense["tokens_per_s"]
            vs_dense, target = f"{v:.2f}", verdict(v, TARGETS["mixed"])
        if batch == 1 and graphs:
            rows.append({"model": model, "ratio": ratio})
            target = verdict(ratio, TARGETS["roofline"])
        out.append(f"| {model} | {batch} | {graphs} | {policies} | {r['step_ms']:.2f} | {r['tokens_per_s']:.0f} | "
                   f"{ratio:.2f} | {speedup} | {vs_dense} | {target} |")
    return "\n".join(out), rows


def prefill_table(prefill, torch):
    """Prefill attention's matrix rate against cuBLAS's in the same run, its
    time with every key through the hooks, and against torch's SDPA on the
    same shapes."""
    torch_cases = {c["context"]: c for c in (torch or {}).get("prefill_cases", [])}
    hooked = prefill.get("BM_PrefillHooked", {})
    head = ["context", "ms", "attention TFLOP/s", "cuBLAS bf16 TFLOP/s", "ratio to cuBLAS", "per-key hooks ms"]
    if torch:
        head += ["torch ms", "speedup vs torch", "vs its fastest backend"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (context,), r in sorted(prefill.get("BM_PrefillDense", {}).items()):
        if not ok(r):
            out.append(f"| {context} | {r.get('error_message', 'skipped')} |" + " |" * (len(head) - 2))
            continue
        h = hooked.get((context,))
        cells = [context, f"{r['ms']:.2f}", f"{r['attn_TFLOPs']:.1f}", f"{r['gemm_TFLOPs']:.0f}",
                 f"{r['ratio_to_gemm']:.2f}", f"{h['ms']:.2f} ({h['ms'] / r['ms']:.2f}x)" if ok(h) else "-"]
        t = torch_cases.get(context)
        if t:
            best = t.get("best_us")
            cells += [f"{t['us'] / 1e3:.2f}", f"{t['us'] / 1e3 / r['ms']:.2f}x",
                      f"{best / 1e3 / r['ms']:.2f}x ({t['best_backend']})" if best else "-"]
        elif torch:
            cells += ["-"] * 3
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(out)


def load_table(load):
    """The engine under load: tokens/s at each concurrency, the mixed run against the dense one."""
    runs = load.get("BM_ServeLoad", {})
    out = ["| streams | policies | output tok/s | total tok/s | median TTFT s | makespan s | vs dense |",
           "|---|---|---|---|---|---|---|"]
    for (streams, mixed), r in sorted(runs.items()):
        policies = "mixed" if mixed else "dense"
        if not ok(r):
            out.append(f"| {streams} | {policies} | {r.get('error_message', 'skipped')} | | | | |")
            continue
        dense = runs.get((streams, 0))
        vs = f"{r['output_tok_s'] / dense['output_tok_s']:.2f}" if mixed and ok(dense) else "-"
        out.append(f"| {streams} | {policies} | {r['output_tok_s']:.0f} | {r['total_tok_s']:.0f} | "
                   f"{r['ttft_median_s']:.2f} | {r['makespan_s']:.1f} | {vs} |")
    return "\n".join(out)


def plot(png, gpu, dense, mixed, quest, engine):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p, rows in (("dense", dense), ("mixed", mixed), ("quest", quest), ("engine", engine)) if rows]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "dense":
            for i, batch in enumerate(sorted({r["batch"] for r in dense})):
                rs = [r for r in dense if r["batch"] == batch]
                color = f"C{i}"
                ax.plot([r["context"] for r in rs], [r["ours"] for r in rs], "o-", color=color, label=f"ours, b={batch}")
                tr = [r for r in rs if "torch" in r]
                if tr:
                    ax.plot([r["context"] for r in tr], [r["torch"] for r in tr], "x--", color=color,
                            label=f"torch SDPA, b={batch}")
            copy = dense[0]["copy"]
            ax.axhline(copy, color="gray", lw=1, label="copy bandwidth")
            ax.axhline(TARGETS["bandwidth"] * copy, color="gray", ls=":", lw=1, label=f"{TARGETS['bandwidth']}x copy")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("context (tokens)")
            ax.set_ylabel("K/V GB/s")
            ax.set_title("decode attention, dense")
            ax.legend(fontsize=6)
        elif panel in ("mixed", "quest"):
            key, target = ("ratio", TARGETS["mixed"]) if panel == "mixed" else ("speedup", TARGETS["quest"])
            rows = mixed if panel == "mixed" else quest
            ax.bar(range(len(rows)), [r[key] for r in rows], color="tab:blue")
            ax.set_xticks(range(len(rows)), [f"b{r['batch']}\n{r['context'] // 1024}k" for r in rows], fontsize=7)
            ax.axhline(target, color="tab:red", ls="--", lw=1, label=f"target {target}x")
            ax.set_title("mixed policies / dense throughput" if panel == "mixed" else "Quest (2048 tokens) vs dense")
            ax.legend(fontsize=7, loc="lower right")
        else:
            ax.bar([r["model"] for r in engine], [r["ratio"] for r in engine], color="tab:blue")
            ax.axhline(TARGETS["roofline"], color="tab:red", ls="--", lw=1, label=f"target {TARGETS['roofline']}")
            ax.set_title("batch-1 decode step / roofline")
            ax.tick_params(axis="x", labelsize=7)
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(gpu)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    print(f"wrote {png}")


POLICIES = {0: "dense", 1: "five policies, shared plans", 2: "five policies, a plan per sequence"}


def staging_report(path, png):
    """The host's staging per decode step (step_metadata_bench, any machine) against the step's roofline."""
    runs = gbench_runs(path).get("BM_BuildDecodeStep", {})
    out = ["| batch | policies | plans kept on the device | host us | copied KB | host / roofline step |",
           "|---|---|---|---|---|---|"]
    for (batch, policies, kept), r in sorted(runs.items()):
        out.append(f"| {batch} | {POLICIES[policies]} | {'yes' if kept else 'no'} | {r['real_time']:.1f} | "
                   f"{r['staged_KB']:.0f} | {r['host_to_roofline']:.4f} |")
    print("Host staging of a Llama-3-8B decode step (BuildStepMetadata):")
    print("\n".join(out) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for (policies, kept) in sorted({(p, k) for (_, p, k) in runs}):
        if policies == 0 and not kept:
            continue  # dense sequences have no plans: the same as kept
        rs = sorted((b, r["host_to_roofline"]) for (b, p, k), r in runs.items() if (p, k) == (policies, kept))
        label = POLICIES[policies] + ("" if policies == 0 else ", kept" if kept else ", staged every step")
        ax.plot([b for b, _ in rs], [v for _, v in rs], "o-" if kept else "x--", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch")
    ax.set_ylabel("host staging / roofline step time")
    ax.set_title("Llama-3-8B decode step, host share")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    print(f"wrote {png}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(ROOT / "bench/results"))
    ap.add_argument("--gpu", help="the file names' <gpu> (default: the newest decode or engine result's)")
    ap.add_argument("--png", default=str(ROOT / "bench/results/cuda_decode.png"))
    args = ap.parse_args()
    results = Path(args.results)
    if (results / "step_metadata_bench.json").exists():
        staging_report(results / "step_metadata_bench.json", results / "step_metadata.png")
    found = sorted(list(results.glob("paged_decode_cuda_bench-*.json")) +
                   list(results.glob("engine_decode_cuda_bench-*.json")), key=lambda p: p.stat().st_mtime)
    if not found:
        print(f"no GPU benchmark results in {results} (scripts/gpu-check.sh writes them on a GPU machine)")
        return 0
    gpu = args.gpu or found[-1].stem.split("-", 1)[1]
    paths = {name: results / f"{name}-{gpu}.json"
             for name in ("paged_decode_cuda_bench", "torch_attention", "engine_decode_cuda_bench",
                          "engine_load_cuda_bench", "paged_prefill_cuda_bench")}
    decode = gbench_runs(paths["paged_decode_cuda_bench"]) if paths["paged_decode_cuda_bench"].exists() else {}
    torch = json.loads(paths["torch_attention"].read_text()) if paths["torch_attention"].exists() else None
    engine = gbench_runs(paths["engine_decode_cuda_bench"]) if paths["engine_decode_cuda_bench"].exists() else {}
    print(f"<!-- {gpu}: " + ", ".join(p.name for p in paths.values() if p.exists()) + " -->")
    dense = mixed = quest = steps = []
    if decode:
        table, dense = dense_table(decode, torch)
        if torch:
            print(f"Decode attention vs torch {torch['torch']} SDPA (GQA by {torch['gqa']}):")
        print(table + "\n")
        table, mixed = mixed_table(decode)
        print(table + "\n")
        table, quest = quest_table(decode)
        print(table + "\n")
    if engine:
        table, steps = engine_table(engine)
        print(table + "\n")
    if paths["paged_prefill_cuda_bench"].exists():
        print("Prefill attention, a chunk of 1024 queries at the end of the context (Llama-3-8B's heads):")
        print(prefill_table(gbench_runs(paths["paged_prefill_cuda_bench"]), torch) + "\n")
    if paths["engine_load_cuda_bench"].exists():
        print("The engine under load (1024 tokens in, 256 out, random weights in Llama-3-8B's shape):")
        print(load_table(gbench_runs(paths["engine_load_cuda_bench"])) + "\n")
    if any((dense, mixed, quest, steps)):
        plot(Path(args.png), gpu, dense, mixed, quest, steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
