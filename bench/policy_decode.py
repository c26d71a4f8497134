#!/usr/bin/env python3
"""Decode speed of each attention policy against dense, measured in the same
run, and the KV memory one sequence holds under streaming against dense over
a long generation, through the real gRPC API of `attnserve serve`.

Speed: batch 1, a ~1000-token prompt (GPL-3 text, as token ids), 128 greedy
tokens (ignore_eos); decode tokens/s = 1 / the server's mean inter-token
latency over the request (attnserve_inter_token_latency_seconds sum and count
before and after it, from /metrics). Kept beside it: decode engine steps per
second (attnserve_engine_step_seconds{phase="decode"}) and the rate the client
saw (tokens after the first / first-to-last arrival: on shared cores the
client's own scheduling makes it noisy, and merged stream messages inflate
it). Policies run
round-robin, --repeats rounds, best of the rounds per policy, after one
warm-up; the ratio to dense is printed (DESIGN.md §7: streaming, virtual
sink, zero-tuning, ACT and emphasis within 5 % of dense).

Memory: one sequence at a time (so the gauge is that sequence's), a
~1000-token prompt and --mem-gen-tokens generated tokens; every 128 tokens the
script reads attnserve_kv_cache_usage_ratio from /metrics, and pages =
ratio x kv_pages (GetModelInfo), bytes = pages x page bytes (fp16 keys and
values of every layer and KV head).

Policies the server answers UNIMPLEMENTED for are recorded as such and
skipped. Writes bench/results/policy_decode.json and policy_decode.png.
Usage:
  .venv/bin/python bench/policy_decode.py              # ~5 min on 2 cores
  .venv/bin/python bench/policy_decode.py --full       # 7000-token memory run, 20 rounds
"""
import argparse
import json
import time
from pathlib import Path

import policy_configs as pc

SPEED = ["dense", "streaming_w1024_s4", "streaming_w256_s4", "streaming_cache_w1024_s4", "virtual_sink_0",
         "zero_tuning_0.5", "zero_tuning_2", "temperature_1.2", "emphasis", "act", "duo", "duo_profile",
         "sparse_1024", "linear_w256_s4"]
MEMORY = ["dense", "streaming_w1024_s4", "streaming_w256_s4", "streaming_cache_w1024_s4", "duo", "duo_profile",
          "linear_w256_s4"]
# DESIGN.md §7 (and the brief): these decode within 5 % of dense.
TARGET = {"streaming_w1024_s4", "streaming_w256_s4", "streaming_cache_w1024_s4", "virtual_sink_0",
          "zero_tuning_0.5", "zero_tuning_2", "act", "emphasis"}
TARGET_RATIO = 0.95
SAMPLE_EVERY = 128


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(pc.DEFAULT_MODEL))
    ap.add_argument("--binary", default=str(pc.DEFAULT_BINARY))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="20 rounds, 7000 generated tokens in the memory run")
    ap.add_argument("--policies", default=",".join(SPEED), help="comma-separated config names")
    ap.add_argument("--memory-policies", default=",".join(MEMORY))
    ap.add_argument("--prompt-tokens", type=int, default=1000)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=None,
                    help="rounds; best of them (10, full 20: a run is ~1 s, and on shared cores best of 3 "
                         "still moved dense by +-30 %%)")
    ap.add_argument("--mem-gen-tokens", type=int, default=None, help="3000, full 7000; 0 skips the memory run")
    ap.add_argument("--out", default=str(pc.ROOT / "bench/results/policy_decode"))
    args = ap.parse_args()
    if args.repeats is None:
        args.repeats = 20 if args.full else 10
    if args.mem_gen_tokens is None:
        args.mem_gen_tokens = 7000 if args.full else 3000
    return args


def decode_configs(bench, prompt_len):
    configs = pc.configs(bench.info)
    # PASTA on a tenth of the prompt (all layers and heads, alpha 0.01): every other
    # prompt token gets the bias, which is the most work emphasis can ask for.
    span = {"begin": prompt_len // 10, "end": prompt_len // 5, "unit": "TOKENS"}
    configs["emphasis"] = ("emphasis 10% span a=0.01", {"emphasis": {"spans": [span], "alpha": 0.01}})
    return configs


SERVER_SERIES = {"itl": ("attnserve_inter_token_latency_seconds", ""),
                 "decode_step": ("attnserve_engine_step_seconds", 'phase="decode"')}


def server_counters(bench):
    """(sum, count) of the server's inter-token latency and decode-step histograms."""
    text = bench.server.metrics()
    values = {}
    for key, (name, labels) in SERVER_SERIES.items():
        for part in ("sum", "count"):
            for line in text.splitlines():
                sample, _, value = line.rpartition(" ")
                if sample == f"{name}_{part}" or (sample.startswith(f"{name}_{part}{{") and labels in sample):
                    values[(key, part)] = float(value)
                    break
    return values


def timed_generate(bench, policy, ids, gen_tokens, on_message=None):
    before = server_counters(bench)
    messages = bench.generate(policy, prompt_token_ids=bench.pb.TokenIds(ids=ids), on_message=on_message,
                              sampling={"max_tokens": gen_tokens, "temperature": 0, "ignore_eos": True})
    after = server_counters(bench)
    server = {}
    for key in SERVER_SERIES:
        dn = after.get((key, "count"), 0) - before.get((key, "count"), 0)
        dt = after.get((key, "sum"), 0) - before.get((key, "sum"), 0)
        server[key] = dn / dt if dn > 0 and dt > 0 else None
    counts = [(t, len(m.token_ids)) for t, m in messages if m.token_ids]
    n = sum(c for _, c in counts)
    first_t, first_n = counts[0]
    last_t = counts[-1][0]
    final = messages[-1][1]
    gaps = sorted((t1 - t0) / c1 for (t0, _), (t1, c1) in zip(counts, counts[1:]))
    return {"generated": n,
            # the server's own inter-token latency (Prometheus histogram sum/count over this request):
            # what the client would see without its own scheduling delays
            "decode_tok_s": server["itl"],
            # the same from decode engine steps only (batch 1: one token per step)
            "decode_step_tok_s": server["decode_step"],
            # as the client saw the stream: tokens after the first / first-to-last arrival
            "client_tok_s": (n - first_n) / (last_t - first_t) if last_t > first_t else None,
            "client_median_gap_tok_s": 1 / gaps[len(gaps) // 2] if gaps and gaps[len(gaps) // 2] > 0 else None,
            "ttft_s": final.metrics.time_to_first_token_seconds, "finish_reason": final.finish_reason,
            "cached_prompt_tokens": final.usage.cached_prompt_tokens}


def run_speed(bench, args, configs, names, ids, result, save, start):
    speed = result["speed"]
    timed_generate(bench, {}, ids, args.gen_tokens)  # warm-up
    skip = {}
    for rnd in range(args.repeats):
        for name in names:
            label, policy = configs[name]
            entry = speed.setdefault(name, {"label": label, "runs": []})
            if name in skip:
                continue
            try:
                run = timed_generate(bench, policy, ids, args.gen_tokens)
            except pc.Outcome as o:
                entry.update(o.record())
                if o.status == "unimplemented":
                    skip[name] = o
                print(f"[speed round {rnd + 1}/{args.repeats} {pc.clock(start)}] {label:28s} {o}", flush=True)
                continue
            entry["runs"].append(run)
            entry["status"] = "ok"
            for key in ("decode_tok_s", "decode_step_tok_s", "client_tok_s"):
                entry[f"best_{key}"] = max(r[key] or 0 for r in entry["runs"])
            print(f"[speed round {rnd + 1}/{args.repeats} {pc.clock(start)}] {label:28s} "
                  f"{run['decode_tok_s']:6.1f} tok/s (best {entry['best_decode_tok_s']:.1f}); decode steps "
                  f"{run['decode_step_tok_s']:.1f}/s; client sees {run['client_tok_s']:.1f} tok/s", flush=True)
            save()
    dense = speed.get("dense", {}).get("best_decode_tok_s")
    print("decode tok/s, best of rounds, ratio to dense:")
    for name in names:
        e = speed[name]
        if e.get("status") != "ok":
            print(f"  {e['label']:28s} {e['status']}")
            continue
        e["ratio_to_dense"] = e["best_decode_tok_s"] / dense if dense else None
        for key in ("decode_step_tok_s", "client_tok_s"):
            base = speed["dense"].get(f"best_{key}")
            e[f"{key}_ratio_to_dense"] = e[f"best_{key}"] / base if base else None
        verdict = ""
        if name in TARGET and e["ratio_to_dense"] is not None:
            e["target_ratio"] = TARGET_RATIO
            e["meets_target"] = e["ratio_to_dense"] >= TARGET_RATIO
            verdict = f"  target >= {TARGET_RATIO:.2f}: {'met' if e['meets_target'] else 'MISSED'}"
        print(f"  {e['label']:28s} {e['best_decode_tok_s']:6.1f} tok/s  {e['ratio_to_dense']:.3f}x dense "
              f"(decode steps {e['decode_step_tok_s_ratio_to_dense']:.3f}x, client {e['client_tok_s_ratio_to_dense']:.3f}x)"
              f"{verdict}", flush=True)
    save()


def run_memory(bench, args, configs, names, ids, result, save, start):
    page_bytes = bench.page_bytes()
    kv_pages = bench.info.kv_pages
    mem = result["memory"]
    mem.update(page_bytes=page_bytes, kv_pages=kv_pages, kv_page_size=bench.info.kv_page_size,
               prompt_tokens=len(ids), gen_tokens=args.mem_gen_tokens, results={})
    for name in names:
        label, policy = configs[name]
        series = []
        state = {"n": 0, "next": 0, "t": None}

        def sample(message, t):
            state["n"] += len(message.token_ids)
            # The final message comes after the sequence released its pages: not sampled.
            if state["n"] >= state["next"] and not message.finished:
                ratio = bench.server.metric("attnserve_kv_cache_usage_ratio")
                pages = round(ratio * kv_pages) if ratio is not None else None
                if not pages:  # the gauge is set once per engine step: not yet for this sequence
                    return
                rate = None
                if state["t"] is not None and series:
                    rate = (state["n"] - series[-1]["generated"]) / (t - state["t"])
                state["t"] = t
                series.append({"generated": state["n"], "usage_ratio": ratio, "pages": pages,
                               "kv_mib": pages * page_bytes / 2 ** 20 if pages is not None else None,
                               "tok_s_since_last": rate})
                state["next"] = state["n"] + SAMPLE_EVERY
                if len(series) % 8 == 1:
                    print(f"[memory {pc.clock(start)}] {label:28s} {state['n']:6d} generated: {pages} pages "
                          f"= {series[-1]['kv_mib']:.1f} MiB" + (f", {rate:.1f} tok/s" if rate else ""), flush=True)

        try:
            run = timed_generate(bench, policy, ids, args.mem_gen_tokens, on_message=sample)
        except pc.Outcome as o:
            mem["results"][name] = {"label": label, **o.record()}
            print(f"[memory {pc.clock(start)}] {label:28s} {o}", flush=True)
            save()
            continue
        peak = max(s["pages"] for s in series if s["pages"] is not None)
        mem["results"][name] = {"label": label, "status": "ok", "series": series, "peak_pages": peak,
                                "peak_kv_mib": peak * page_bytes / 2 ** 20,
                                "final_pages": series[-1]["pages"], "decode_tok_s": run["decode_tok_s"],
                                "generated": run["generated"]}
        save()
    dense = mem["results"].get("dense", {}).get("peak_kv_mib")
    print(f"KV memory per sequence after {args.prompt_tokens} + {args.mem_gen_tokens} tokens (peak):")
    for name, e in mem["results"].items():
        if e.get("status") == "ok":
            e["peak_ratio_to_dense"] = e["peak_kv_mib"] / dense if dense else None
            print(f"  {e['label']:28s} {e['peak_pages']:5d} pages = {e['peak_kv_mib']:7.1f} MiB"
                  + (f" ({e['peak_ratio_to_dense']:.3f}x dense)" if dense else "")
                  + f", decode over the run {e['decode_tok_s']:.1f} tok/s", flush=True)
        else:
            print(f"  {e['label']:28s} {e['status']}")
    save()


def plot(result, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.3, 1]})
    speed = result["speed"]
    names = list(speed)
    dense = speed.get("dense", {}).get("best_decode_tok_s")
    for i, name in enumerate(names):
        e = speed[name]
        if e.get("status") == "ok":
            color = "tab:gray" if name == "dense" else ("tab:green" if e.get("meets_target", True) else "tab:red")
            ax.bar(i, e["best_decode_tok_s"], color=color)
            ax.text(i, e["best_decode_tok_s"], f"{e['ratio_to_dense']:.2f}x", ha="center", va="bottom", fontsize=7)
        else:
            ax.text(i, 0.03, "not implemented" if e.get("status") == "unimplemented" else e.get("status"),
                    rotation=90, ha="center", va="bottom", fontsize=8, color="gray",
                    transform=ax.get_xaxis_transform())
    if dense:
        ax.axhline(dense * TARGET_RATIO, color="tab:red", lw=0.8, ls="--", label="95% of dense (§7 target)")
        ax.legend(fontsize=7, loc="upper right")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([speed[n]["label"] for n in names], rotation=40, ha="right", fontsize=7)
    ax.set_ylabel("decode tokens/s (best of rounds)")
    ax.set_title(f"batch-1 decode, {result['prompt_tokens']}-token prompt, {result['gen_tokens']} tokens, "
                 f"{result['threads']} threads", fontsize=9)

    mem = result.get("memory", {}).get("results", {})
    for name, e in mem.items():
        if e.get("status") == "ok":
            xs = [result["memory"]["prompt_tokens"] + s["generated"] for s in e["series"]]
            bx.plot(xs, [s["kv_mib"] for s in e["series"]], label=e["label"])
    missing = [e["label"] for e in mem.values() if e.get("status") != "ok"]
    if missing:
        bx.text(0.01, 0.97, "not implemented: " + ", ".join(missing), transform=bx.transAxes, fontsize=7,
                color="gray", va="top")
    bx.set_xlabel("sequence length (prompt + generated tokens)")
    bx.set_ylabel("KV cache held by the sequence (MiB)")
    bx.set_title("KV memory per sequence (attnserve_kv_cache_usage_ratio x pool)", fontsize=9)
    bx.set_ylim(bottom=0)
    bx.legend(fontsize=7, loc="center right")
    fig.suptitle(result["model"], fontsize=10)
    fig.tight_layout()
    fig.savefig(f"{out}.png", dpi=110)
    plt.close(fig)


def main():
    pc.stop_on_sigterm()
    args = parse_args()
    start = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    bench = pc.Bench(args.binary, args.model, args.threads)
    ids, _ = bench.tokenize((pc.LICENSES / "GPL-3").read_text())
    ids = ids[:args.prompt_tokens]
    configs = decode_configs(bench, len(ids))
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    mem_names = [n.strip() for n in args.memory_policies.split(",") if n.strip()]
    unknown = [n for n in names + mem_names if n not in configs]
    if unknown:
        raise SystemExit(f"unknown policy config(s) {unknown}; known: {list(configs)}")
    result = {"benchmark": "policy_decode", "model": Path(args.model).name, "binary": str(args.binary),
              "source": pc.source_state(), "machine": pc.machine(), "threads": args.threads, "args": vars(args),
              "prompt_tokens": len(ids), "gen_tokens": args.gen_tokens, "repeats": args.repeats,
              "policies": {n: {"label": configs[n][0], "policy": configs[n][1]} for n in dict.fromkeys(names + mem_names)},
              "server_policy_support": bench.implemented(), "speed": {}, "memory": {}}

    def save():
        result["elapsed_s"] = time.perf_counter() - start
        out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")

    print(f"policy_decode: {result['model']} on {bench.info.backend}, {args.threads} threads, prompt {len(ids)} "
          f"tokens; server says implemented: {[n for n, ok in result['server_policy_support'].items() if ok]}",
          flush=True)
    try:
        run_speed(bench, args, configs, names, ids, result, save, start)
        if args.mem_gen_tokens:
            run_memory(bench, args, configs, mem_names, ids, result, save, start)
    finally:
        bench.stop()
        result["machine"]["loadavg_at_end"] = __import__("os").getloadavg()[0]
        save()
    plot(result, str(out))
    print(f"done in {pc.clock(start)}: {out.with_suffix('.json')}, {out.with_suffix('.png')}", flush=True)


if __name__ == "__main__":
    main()
