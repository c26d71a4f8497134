#!/usr/bin/env python3
"""Aggregate generation throughput of `attnserve serve` under concurrent gRPC
streams, against batch 1 measured in the same run.

Starts the server on the default model, then for each concurrency level runs
that many client threads, each streaming greedy completions of `--gen-tokens`
tokens (ignore_eos) from distinct prompts of `--prompt-tokens` tokens, for
`--requests-per-stream` requests. Reports output tokens/s over the wall time
of each level and the ratio to concurrency 1 (DESIGN.md §7: 16 streams
should reach >= 4x the batch-1 aggregate on the CPU).

Writes bench/results/serve_load.json and serve_load.png. Usage:
  .venv/bin/python bench/serve_load.py [--levels 1,4,16] [--threads 2]
On a GPU, at Llama-3-8B's shape with random weights (DESIGN.md §7's 64-256
streams of 1024 tokens in, 256 out):
  ATTNSERVE_TEST_BACKEND=cuda .venv/bin/python bench/serve_load.py --levels 1,64,128,256 \
      --prompt-words 700 --gen-tokens 256 --out bench/results/serve_load_llama3_8b_dummy \
      --server-args "--load-format dummy --dummy-shape llama-3-8b --max-num-seqs 256 --max-num-batched-tokens 4096"
"""
import argparse
import json
import platform
import shlex
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))

import grpc_stubs  # noqa: E402
from server_process import ServerProcess  # noqa: E402

TEXT = Path("/usr/share/common-licenses/GPL-3").read_text().split()


def prompt_for(i, n_words):
    start = (i * 37) % (len(TEXT) - n_words)
    return " ".join(TEXT[start:start + n_words])


def run_level(stubs, server, concurrency, args):
    stub = stubs.pb_grpc.GenerationStub(server.channel)
    counts = [0] * concurrency
    ttfts = []
    lock = threading.Lock()

    def client(c):
        for r in range(args.requests_per_stream):
            request = stubs.pb.GenerateRequest(
                prompt=prompt_for(c * 1000 + r, args.prompt_words),
                sampling={"max_tokens": args.gen_tokens, "ignore_eos": True, "temperature": 0})
            for message in stub.Generate(request, timeout=600):
                counts[c] += len(message.token_ids)
                if message.finished:
                    with lock:
                        ttfts.append(message.metrics.time_to_first_token_seconds)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttfts.sort()
    return {"concurrency": concurrency, "output_tokens": sum(counts), "wall_s": wall,
            "output_tok_s": sum(counts) / wall, "ttft_median_s": ttfts[len(ttfts) // 2]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--binary", default=str(ROOT / "build/server/attnserve"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--prompt-words", type=int, default=64)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--requests-per-stream", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench/results/serve_load"))
    ap.add_argument("--server-args", default="", help="more flags for `attnserve serve`, as one string")
    args = ap.parse_args()

    import tempfile
    stubs = grpc_stubs.generate(Path(tempfile.mkdtemp()))
    server = ServerProcess(args.binary, args.model, Path(tempfile.mkdtemp()) / "server.log", "--threads", str(args.threads),
                           *shlex.split(args.server_args))
    levels = []
    try:
        run_level(stubs, server, 1, argparse.Namespace(**{**vars(args), "requests_per_stream": 1}))  # warm-up
        for c in (int(x) for x in args.levels.split(",")):
            levels.append(run_level(stubs, server, c, args))
            base = levels[0]["output_tok_s"]
            print(f"concurrency {c:3d}: {levels[-1]['output_tok_s']:7.1f} tok/s "
                  f"({levels[-1]['output_tok_s'] / base:.2f}x batch 1), median TTFT "
                  f"{levels[-1]['ttft_median_s'] * 1000:.0f} ms", flush=True)
    finally:
        server.stop()
    base = levels[0]["output_tok_s"]
    for level in levels:
        level["ratio_to_batch1"] = level["output_tok_s"] / base
    result = {"benchmark": "serve_load", "model": Path(args.model).name, "server_args": args.server_args,
              "threads": args.threads,
              "prompt_words": args.prompt_words, "gen_tokens": args.gen_tokens,
              "machine": platform.processor() or platform.machine(), "levels": levels}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [lv["concurrency"] for lv in levels]
    ax.plot(xs, [lv["output_tok_s"] for lv in levels], "o-", label="attnserve")
    ax.plot(xs, [base * x for x in xs], ":", color="gray", label="linear in batch 1")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("output tokens/s")
    ax.set_title(f"{result['model']}, {args.threads} threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)


if __name__ == "__main__":
    main()
