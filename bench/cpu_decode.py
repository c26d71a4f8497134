#!/usr/bin/env python3
"""Prefill and batch-1 decode speed of attnserve vs llama.cpp (llama-cpp-python)
on the same GGUF, the same thread count and the same prompt, in one run.

Writes bench/results/cpu_decode.json and cpu_decode.png. Usage:
  .venv/bin/python bench/cpu_decode.py [--threads 2] [--prompt-tokens 256] [--gen-tokens 128] [--repeats 3]
"""
import argparse
import json
import platform
import re
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def attnserve_run(binary, model, prompt, gen_tokens, threads):
    out = subprocess.run([str(binary), "generate", "--model", str(model), "--prompt", prompt, "--max-tokens",
                          str(gen_tokens), "--ignore-eos", "--temperature", "0", "--threads", str(threads), "--stats"],
                         capture_output=True, text=True, check=True)
    m = re.search(r"prompt tokens: (\d+), prefill: ([\d.]+) tok/s .*generated: (\d+), decode: ([\d.]+) tok/s",
                  out.stderr)
    if not m:
        raise RuntimeError(f"no stats in attnserve output:\n{out.stderr}")
    return {"prompt_tokens": int(m[1]), "prefill_tok_s": float(m[2]), "generated": int(m[3]),
            "decode_tok_s": float(m[4])}


def llama_cpp_run(llm, prompt_ids, gen_tokens):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt_ids)
    t1 = time.perf_counter()
    for _ in range(gen_tokens - 1):
        row = llm.scores[llm.n_tokens - 1]
        tok = int(row.argmax())
        llm.eval([tok])
    t2 = time.perf_counter()
    return {"prompt_tokens": len(prompt_ids), "prefill_tok_s": len(prompt_ids) / (t1 - t0),
            "generated": gen_tokens, "decode_tok_s": (gen_tokens - 1) / (t2 - t1)}


def best(runs, key):
    return max(r[key] for r in runs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--binary", default=str(ROOT / "build/server/attnserve"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench/results/cpu_decode"))
    args = ap.parse_args()

    from llama_cpp import Llama

    llm = Llama(model_path=args.model, n_ctx=2048, n_batch=512, n_threads=args.threads,
                n_threads_batch=args.threads, verbose=False)
    text = Path("/usr/share/common-licenses/GPL-3").read_text()
    prompt_ids = llm.tokenize(text.encode(), add_bos=False)[: args.prompt_tokens]
    prompt = llm.detokenize(prompt_ids).decode("utf-8", errors="ignore")
    prompt_ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)

    ours, theirs = [], []
    for i in range(args.repeats):
        ours.append(attnserve_run(args.binary, args.model, prompt, args.gen_tokens, args.threads))
        theirs.append(llama_cpp_run(llm, prompt_ids, args.gen_tokens))
        print(f"[{i + 1}/{args.repeats}] attnserve prefill {ours[-1]['prefill_tok_s']:.1f} decode "
              f"{ours[-1]['decode_tok_s']:.1f} tok/s | llama.cpp prefill {theirs[-1]['prefill_tok_s']:.1f} decode "
              f"{theirs[-1]['decode_tok_s']:.1f} tok/s", flush=True)
    result = {
        "benchmark": "cpu_decode",
        "model": Path(args.model).name,
        "threads": args.threads,
        "prompt_tokens": ours[0]["prompt_tokens"],
        "gen_tokens": args.gen_tokens,
        "machine": platform.processor() or platform.machine(),
        "attnserve": {"prefill_tok_s": best(ours, "prefill_tok_s"), "decode_tok_s": best(ours, "decode_tok_s")},
        "llama_cpp": {"prefill_tok_s": best(theirs, "prefill_tok_s"), "decode_tok_s": best(theirs, "decode_tok_s")},
        "runs": {"attnserve": ours, "llama_cpp": theirs},
    }
    result["ratio"] = {k: result["attnserve"][k] / result["llama_cpp"][k] for k in ("prefill_tok_s", "decode_tok_s")}
    print(json.dumps({k: result[k] for k in ("attnserve", "llama_cpp", "ratio")}, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    for ax, key, title in zip(axes, ("prefill_tok_s", "decode_tok_s"), ("prefill", "batch-1 decode")):
        vals = [result["attnserve"][key], result["llama_cpp"][key]]
        ax.bar(["attnserve", "llama.cpp"], vals, color=["tab:blue", "tab:gray"])
        ax.set_title(f"{title} ({result['ratio'][key]:.2f}x)")
        ax.set_ylabel("tokens/s")
    fig.suptitle(f"{result['model']}, {args.threads} threads, {result['prompt_tokens']}-token prompt")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)


if __name__ == "__main__":
    main()
