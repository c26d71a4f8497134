#!/usr/bin/env python3
"""Quest (sparse decoding) against dense attention, measured in one run.

(a) Attention kernel: build/bench/attention_bench times one decode query's
    attention over one layer (every KV head) at contexts 1k-32k, dense and
    with Quest budgets 256-2048 (page scoring and selection included), at the
    default model's shapes and Llama-3-8B's. Reported as Quest's speed-up
    over dense (DESIGN §7 target: >= 3x at 8k with budget 1024).
(b) End to end: `attnserve serve` on the default model generates greedy
    tokens after prompts of 1k, 4k and 8k license tokens, dense, Quest
    budget 1024 and the linear mode (window 256, whose cost should not grow
    with the context); decode tokens/s from the server's inter-token latency
    histogram, best of --repeats rounds.

Writes bench/results/quest.json and quest.png. Usage:
  .venv/bin/python bench/quest_bench.py               # ~4 min on 2 cores
"""
import argparse
import json
import subprocess
import time
from pathlib import Path

import policy_configs as pc
from policy_decode import timed_generate


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel-binary", default=str(pc.ROOT / "build/bench/attention_bench"))
    ap.add_argument("--binary", default=str(pc.DEFAULT_BINARY))
    ap.add_argument("--model", default=str(pc.DEFAULT_MODEL))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--contexts", default="1024,4096,8000")
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(pc.ROOT / "bench/results/quest"))
    return ap.parse_args()


def kernel_times(binary):
    """{shape: {mode: {context: microseconds}}} from attention_bench's JSON."""
    out = subprocess.run([binary, "--benchmark_format=json"], capture_output=True, text=True, check=True)
    times = {}
    for b in json.loads(out.stdout)["benchmarks"]:
        shape, mode, context = b["run_name"].split("/")[:3]
        times.setdefault(shape, {}).setdefault(mode, {})[int(context.split(":")[1])] = b["real_time"]
        print(f"[kernel] {shape:10s} {mode:10s} {context:14s} {b['real_time']:9.1f} us", flush=True)
    return times


def end_to_end(args, start):
    bench = pc.Bench(args.binary, args.model, args.threads)
    text = "\n\n".join(t for _, t in pc.license_texts())
    ids, _ = bench.tokenize(text)
    policies = {"dense": {}, f"quest{args.budget}": {"sparse": {"token_budget": args.budget}},
                "linear_w256": {"linear": {"window_tokens": 256, "sink_tokens": 4}}}
    runs = {}
    try:
        for context in (int(c) for c in args.contexts.split(",")):
            prompt = ids[:context]
            for rnd in range(args.repeats):
                for name, policy in policies.items():
                    r = timed_generate(bench, policy, prompt, args.gen_tokens)
                    runs.setdefault(name, {}).setdefault(context, []).append(r["decode_tok_s"])
                    print(f"[e2e {pc.clock(start)}] context {context} round {rnd + 1} {name}: "
                          f"{r['decode_tok_s']:.1f} tok/s", flush=True)
    finally:
        bench.stop()
    return {name: {c: max(v) for c, v in by_context.items()} for name, by_context in runs.items()}


def plot(result, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for shape, modes in result["kernel_us"].items():
        dense = modes["dense"]
        for mode, times in modes.items():
            if mode == "dense":
                continue
            xs = sorted(times)
            a.plot(xs, [dense[x] / times[x] for x in xs], "o-" if shape == "smollm2" else "s--",
                   label=f"{shape} {mode}")
    a.axhline(3, color="tab:red", lw=0.8, ls=":", label="3x (target at 8k, budget 1024)")
    a.axhline(1, color="gray", lw=0.8)
    a.set_xscale("log", base=2)
    a.set_xlabel("context (tokens)")
    a.set_ylabel("dense time / Quest time")
    a.set_title("decode attention kernel, one layer", fontsize=9)
    a.legend(fontsize=6)
    e2e = result["decode_tok_s"]
    for name, by_context in e2e.items():
        xs = sorted(by_context, key=int)
        b.plot([int(x) for x in xs], [by_context[x] for x in xs], "o-", label=name)
    b.set_xlabel("prompt tokens")
    b.set_ylabel("decode tokens/s (best of rounds)")
    b.set_title(f"end to end, {result['model']}, {result['threads']} threads", fontsize=9)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{out}.png", dpi=110)


def main():
    args = parse_args()
    start = time.perf_counter()
    result = {"benchmark": "quest", "model": Path(args.model).name, "threads": args.threads,
              "machine": pc.machine(), "source": pc.source_state(), "args": vars(args)}
    result["kernel_us"] = kernel_times(args.kernel_binary)
    result["kernel_speedup"] = {shape: {mode: {c: modes["dense"][c] / t for c, t in times.items()}
                                        for mode, times in modes.items() if mode != "dense"}
                                for shape, modes in result["kernel_us"].items()}
    result["decode_tok_s"] = end_to_end(args, start)
    dense = result["decode_tok_s"]["dense"]
    result["decode_ratio_to_dense"] = {name: {c: tok_s[c] / dense[c] for c in dense}
                                       for name, tok_s in result["decode_tok_s"].items() if name != "dense"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    plot(json.loads(json.dumps(result)), str(out))
    k = result["kernel_speedup"]["smollm2"][f"quest{args.budget}"]
    print(f"kernel speed-up at budget {args.budget}: " + ", ".join(f"{c}: {v:.2f}x" for c, v in k.items()))
    for name, ratios in result["decode_ratio_to_dense"].items():
        print(f"end-to-end decode, {name} / dense: " + ", ".join(f"{c}: {v:.2f}x" for c, v in ratios.items()))


if __name__ == "__main__":
    main()
