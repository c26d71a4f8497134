#!/usr/bin/env python3
"""Quality of each attention policy on the default model, through the real
gRPC API of `attnserve serve` (Score and Generate with `attention`).

(a) Perplexity (Score) of real texts that ship with Debian, never downloaded:
    /usr/share/common-licenses/{Apache-2.0, GPL-3, LGPL-2.1} (each cut to
    --text-tokens), a concatenation of the distinct license texts cut to
    --long-tokens (~7000, inside the model's 8192 context), and a longer one of
    --beyond-tokens (> the context) for the policies that can go past it
    (streaming with positions CACHE); dense is tried there too and its answer
    recorded.
(b) Key retrieval (Generate, greedy): a random 5-digit pass key placed at a
    depth (10/50/90 %) of license filler text, total prompt L tokens, in the
    model's chat template, asking for the key ("Answer with the number only."); the assistant turn starts with
    "The pass key is" and 8 tokens are generated; a trial is correct when the
    key appears in them. Keys are seeded and the same for every policy.

Policies the server answers UNIMPLEMENTED for are recorded as such (with the
server's message) and skipped, so a new policy is covered by the next run.

Writes bench/results/policy_quality.json (updated after every measurement),
policy_quality_ppl.png, policy_quality_retrieval.png and
policy_quality_retrieval_depth.png. Usage:
  .venv/bin/python bench/policy_quality.py                 # quick: ~15 min on 2 cores
  .venv/bin/python bench/policy_quality.py --full          # every policy, whole texts, more trials
  .venv/bin/python bench/policy_quality.py --binary build-bench/server/attnserve --trials 3 ...
"""
import argparse
import json
import random
import subprocess
import time
from pathlib import Path

import numpy as np

import policy_configs as pc

QUICK_RETRIEVAL = ["dense", "streaming_w1024_s4", "streaming_w256_s4", "streaming_cache_w1024_s4",
                   "virtual_sink_0", "zero_tuning_0.5", "zero_tuning_2", "temperature_1.2",
                   "act", "duo", "duo_profile", "sparse_256", "sparse_1024", "sparse_2048", "linear_w256_s4",
                   "linear_w1024_s4"]
BEYOND_POLICIES = ["dense", "streaming_w1024_s4", "streaming_cache_w1024_s4", "linear_w256_s4"]

INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. "
         "Find it and memorize it. I will quiz you about the important information there.\n\n")
KEY_SENTENCE = " The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\n\nWhat is the pass key? Answer with the number only."
ANSWER_PREFIX = "The pass key is"
PLACEHOLDER = "@@CONTENT@@"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(pc.DEFAULT_MODEL))
    ap.add_argument("--binary", default=str(pc.DEFAULT_BINARY))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full", action="store_true",
                    help="whole texts, every policy in retrieval, 5 trials, 16384-token beyond-context text")
    ap.add_argument("--ppl-policies", default="all", help="comma-separated config names, or 'all'")
    ap.add_argument("--retrieval-policies", default=None, help="comma-separated config names, or 'all'")
    ap.add_argument("--text-tokens", type=int, default=None,
                    help="cut each single license text to this many tokens (0: whole, up to the context); "
                         "quick 2048")
    ap.add_argument("--long-tokens", type=int, default=7000)
    ap.add_argument("--scored-prompt", type=int, default=256,
                    help="Score's prompt_tokens: later tokens are scored as generated ones, so Quest reads its "
                         "pages there and ACT finds its key sets from these tokens only")
    ap.add_argument("--beyond-tokens", type=int, default=None, help="quick 10000, full 16384; 0 skips it")
    ap.add_argument("--lengths", default="512,2048,4096,7000")
    ap.add_argument("--depths", default="0.1,0.5,0.9")
    ap.add_argument("--trials", type=int, default=None, help="per (policy, length, depth); quick 1, full 5")
    ap.add_argument("--gen-tokens", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-ppl", action="store_true")
    ap.add_argument("--skip-retrieval", action="store_true")
    ap.add_argument("--merge", action="store_true",
                    help="update the policies measured now in an existing --out JSON (e.g. a policy that just "
                         "landed) instead of starting a new one; lengths, depths and trials must match")
    ap.add_argument("--out", default=str(pc.ROOT / "bench/results/policy_quality"))
    args = ap.parse_args()
    if args.text_tokens is None:
        args.text_tokens = 0 if args.full else 2048
    if args.beyond_tokens is None:
        args.beyond_tokens = 16384 if args.full else 10000
    if args.trials is None:
        args.trials = 5 if args.full else 1
    if args.retrieval_policies is None:
        args.retrieval_policies = "all" if args.full else ",".join(QUICK_RETRIEVAL)
    return args


def select(names, all_configs):
    if names == "all":
        return list(all_configs)
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in all_configs]
    if unknown:
        raise SystemExit(f"unknown policy config(s) {unknown}; known: {list(all_configs)}")
    return chosen


def ppl_of(logprobs, begin=1, end=None):
    lp = np.asarray(logprobs[begin:end], dtype=np.float64)
    return float(np.exp(-lp.mean())) if lp.size else None


# -- (a) perplexity ----------------------------------------------------------------------


def perplexity_jobs(bench, args):
    """[(text name, token ids)]: the three texts, the long concatenation and the one past the context."""
    context = bench.info.context_length
    texts = dict(pc.license_texts())
    jobs = []
    for name in ["Apache-2.0", "GPL-3", "LGPL-2.1"]:
        ids, _ = bench.tokenize(texts[name])
        cap = min(args.text_tokens or context, context)
        jobs.append((name, ids[:cap]))
    concat = "\n\n".join(t for _, t in pc.license_texts())
    ids, _ = bench.tokenize(concat)
    jobs.append((f"licenses-{args.long_tokens}", ids[:args.long_tokens]))
    if args.beyond_tokens:
        if len(ids) < args.beyond_tokens:
            raise SystemExit(f"the license concatenation has only {len(ids)} tokens")
        jobs.append((f"licenses-{args.beyond_tokens} (beyond context)", ids[:args.beyond_tokens]))
    return jobs


def run_perplexity(bench, args, configs, names, result, save, start):
    jobs = perplexity_jobs(bench, args)
    context = bench.info.context_length
    work = [(n, t, ids) for n in names for t, ids in jobs
            if len(ids) <= context or n in BEYOND_POLICIES]
    result["perplexity"]["texts"] = {t: len(ids) for t, ids in jobs}
    skip = {}  # configs the server does not implement: one call tells
    for k, (name, text, ids) in enumerate(work, 1):
        label, policy = configs[name]
        entry = {"tokens": len(ids)}
        if name in skip:
            entry.update(skip[name])
        else:
            t0 = time.perf_counter()
            try:
                r = bench.score(ids, policy, args.scored_prompt)
                lp = list(r.token_logprobs)
                entry.update(status="ok", ppl=r.perplexity, seconds=time.perf_counter() - t0,
                             ppl_from_1024=ppl_of(lp, 1024))
                if len(ids) > context:
                    entry.update(ppl_inside_context=ppl_of(lp, 1, context), ppl_beyond_context=ppl_of(lp, context))
            except pc.Outcome as o:
                entry.update(o.record())
                if o.status == "unimplemented":
                    skip[name] = o.record()
        result["perplexity"]["results"].setdefault(name, {})[text] = entry
        shown = (f"ppl {entry['ppl']:.3f}" + (f" (beyond context {entry['ppl_beyond_context']:.3f})"
                                              if "ppl_beyond_context" in entry else "")
                 + f" in {entry['seconds']:.1f} s") if entry.get("status") == "ok" else \
            f"{entry['status']}: {entry['message']}"
        print(f"[ppl {k}/{len(work)} {pc.clock(start)}] {label:28s} {text} ({len(ids)} tok): {shown}", flush=True)
        save()


# -- (b) key retrieval --------------------------------------------------------------------


class Prompts:
    """Pass-key prompts of a given total length, rendered with the model's chat template."""

    def __init__(self, bench, args):
        self.bench = bench
        chat = bench.tmp / "chat.json"
        chat.write_text(json.dumps([[{"role": "user", "content": PLACEHOLDER}]]))
        out = subprocess.run([str(bench.binary), "tokenize", "--model", str(bench.model), "--chat_file", str(chat)],
                             capture_output=True, text=True, check=True)
        rendered = json.loads(out.stdout)[0]["text"]
        self.head, self.tail = rendered.split(PLACEHOLDER)
        filler = "\n\n".join(t for _, t in pc.license_texts())
        ids, offsets = bench.tokenize(filler, add_special=False)
        self.filler_bytes = filler.encode()
        self.ends = offsets[1::2]  # byte end of each filler token
        self.overhead = self.tokens(self.render("", "", "00000"))
        assert self.overhead < 256, self.overhead

    def render(self, before, after, key):
        return (self.head + INTRO + before + KEY_SENTENCE.format(key=key) + after + QUESTION + self.tail
                + ANSWER_PREFIX)

    def tokens(self, prompt):
        return len(self.bench.tokenize(prompt, add_special=True, parse_special=True)[0])

    def build(self, length, depth, key):
        """(prompt, byte span of the key sentence) for a prompt of about `length` tokens."""
        n = length - self.overhead
        end = self.ends[n - 1]
        cut = self.ends[max(int(round(depth * n)) - 1, 0)]
        cut = self.filler_bytes.rfind(b" ", 0, cut) + 1 or cut  # at a word boundary
        before = self.filler_bytes[:cut].decode(errors="ignore")
        after = self.filler_bytes[cut:end].decode(errors="ignore")
        prompt = self.render(before, after, key)
        begin = len((self.head + INTRO + before).encode())
        return prompt, (begin, begin + len(KEY_SENTENCE.format(key=key).encode()))


def keys_for(args, lengths, depths):
    rng = random.Random(args.seed)
    return {(L, d, t): str(rng.randint(10000, 99999)) for L in lengths for d in depths for t in range(args.trials)}


def check_template(bench, prompts):
    """The prompt this script renders tokenizes as the server's own rendering of the same chat."""
    content = INTRO + "Hello." + QUESTION
    messages = bench.generate({}, messages=bench.pb.ChatMessages(messages=[{"role": "user", "content": content}]),
                              sampling={"max_tokens": 1, "temperature": 0})
    server_tokens = messages[-1][1].usage.prompt_tokens
    ours = prompts.tokens(prompts.head + content + prompts.tail)
    return {"server_rendered_tokens": server_tokens, "script_rendered_tokens": ours, "match": server_tokens == ours}


def run_retrieval(bench, args, configs, names, result, save, start):
    prompts = Prompts(bench, args)
    lengths = [int(x) for x in args.lengths.split(",")]
    depths = [float(x) for x in args.depths.split(",")]
    keys = keys_for(args, lengths, depths)
    rr = result["retrieval"]
    rr.update(lengths=lengths, depths=depths, trials=args.trials, gen_tokens=args.gen_tokens,
              template_check=check_template(bench, prompts), answer_prefix=ANSWER_PREFIX,
              key_sentence=KEY_SENTENCE.strip(), results={})
    print(f"retrieval: chat template check {rr['template_check']}", flush=True)
    total = len(names) * len(lengths) * len(depths) * args.trials
    k = 0
    for name in names:
        label, policy = configs[name]
        cells = rr["results"][name] = {"label": label, "cells": {}}
        status = None
        for L in lengths:
            for d in depths:
                trials = []
                for t in range(args.trials):
                    k += 1
                    if status is not None:
                        continue
                    key = keys[(L, d, t)]
                    prompt, _ = prompts.build(L, d, key)
                    t0 = time.perf_counter()
                    try:
                        messages = bench.generate(policy, prompt=prompt, sampling={
                            "max_tokens": args.gen_tokens, "temperature": 0, "ignore_eos": False})
                    except pc.Outcome as o:
                        if o.status == "unimplemented":
                            status = o.record()
                            cells.update(status)
                            print(f"[retrieval {k}/{total} {pc.clock(start)}] {label}: {o}", flush=True)
                            continue
                        trials.append({"key": key, **o.record()})
                        print(f"[retrieval {k}/{total} {pc.clock(start)}] {label} L={L} depth={d}: {o}", flush=True)
                        continue
                    text = "".join(m.text for _, m in messages)
                    usage = messages[-1][1].usage
                    ok = key in text
                    trials.append({"key": key, "output": text, "correct": ok, "prompt_tokens": usage.prompt_tokens,
                                   "cached_prompt_tokens": usage.cached_prompt_tokens,
                                   "seconds": time.perf_counter() - t0})
                    print(f"[retrieval {k}/{total} {pc.clock(start)}] {label:28s} L={L:5d} depth={d:.1f} "
                          f"trial {t}: key {key} -> {text.strip()!r:24s} {'OK' if ok else 'miss'} "
                          f"({usage.prompt_tokens} tok, {usage.cached_prompt_tokens} cached, "
                          f"{time.perf_counter() - t0:.1f} s)", flush=True)
                if status is None:
                    scored = [tr for tr in trials if "correct" in tr]
                    cells["cells"][f"{L}@{d}"] = {
                        "length": L, "depth": d, "trials": trials,
                        "accuracy": sum(tr["correct"] for tr in scored) / len(scored) if scored else None}
                save()
        if status is None:
            cells["status"] = "ok"
            cells["accuracy_by_length"] = {}
            for L in lengths:
                accs = [c["accuracy"] for c in cells["cells"].values() if c["length"] == L and c["accuracy"] is not None]
                cells["accuracy_by_length"][str(L)] = sum(accs) / len(accs) if accs else None
            summary = ", ".join(f"L={L}: {a:.2f}" for L, a in cells["accuracy_by_length"].items() if a is not None)
            print(f"retrieval {label}: {summary}", flush=True)
        save()


# -- plots --------------------------------------------------------------------------------


def plot(result, out, configs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ppl = result.get("perplexity", {}).get("results", {})
    if ppl:
        texts = [t for t in result["perplexity"]["texts"] if "beyond" not in t]
        names = list(ppl)
        fig, ax = plt.subplots(figsize=(max(8, 0.8 * len(names) + 2), 4.5))
        width = 0.8 / len(texts)
        for j, text in enumerate(texts):
            xs, ys = [], []
            for i, name in enumerate(names):
                e = ppl[name].get(text, {})
                if e.get("status") == "ok":
                    xs.append(i + (j - (len(texts) - 1) / 2) * width)
                    ys.append(e["ppl"])
            ax.bar(xs, ys, width, label=f"{text} ({result['perplexity']['texts'][text]} tok)")
        for i, name in enumerate(names):
            status = next(iter(ppl[name].values())).get("status")
            if status != "ok":
                ax.text(i, 0.03, "not implemented" if status == "unimplemented" else status, rotation=90,
                        ha="center", va="bottom", fontsize=8, color="gray", transform=ax.get_xaxis_transform())
        dense = [e["ppl"] for t, e in ppl.get("dense", {}).items() if t in texts and e.get("status") == "ok"]
        for y in dense:
            ax.axhline(y, color="gray", lw=0.5, ls=":")
        ax.set_yscale("log")
        values = [e["ppl"] for r in ppl.values() for t, e in r.items() if t in texts and e.get("status") == "ok"]
        if values:
            ax.set_ylim(min(values) / 1.5, max(values) * 1.3)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([configs[n][0] for n in names], rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("perplexity (log scale; dotted: dense)")
        ax.set_title(f"{result['model']}: perplexity per attention policy")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(f"{out}_ppl.png", dpi=110)
        plt.close(fig)

    rr = result.get("retrieval", {}).get("results", {})
    done = {n: r for n, r in rr.items() if r.get("status") == "ok"}
    if done:
        lengths = result["retrieval"]["lengths"]
        depths = result["retrieval"]["depths"]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, (name, r) in enumerate(done.items()):
            ys = [r["accuracy_by_length"].get(str(L)) for L in lengths]
            nudge = (i - (len(done) - 1) / 2) * 0.012  # equal curves stay visible side by side
            ax.plot(lengths, [np.nan if y is None else y + nudge for y in ys], "o-" if i < 10 else "s--",
                    label=r["label"], alpha=0.85)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths)
        ax.set_xticklabels([str(L) for L in lengths])
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel(f"accuracy (mean over depths {', '.join(f'{d:.0%}' for d in depths)})")
        missing = [rr[n]["label"] for n in rr if n not in done]
        title = (f"pass-key retrieval, {result['model']}, {result['retrieval']['trials']} trial(s) per "
                 f"length and depth\n(curves nudged apart vertically so that equal ones stay visible)")
        ax.set_title(title, fontsize=9)
        if missing:
            fig.text(0.01, 0.01, "not implemented: " + ", ".join(missing), fontsize=7, color="gray")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        fig.savefig(f"{out}_retrieval.png", dpi=110)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(1.0 * len(lengths) * len(depths) / 2 + 4, 0.4 * len(done) + 1.5))
        grid = np.array([[r["cells"].get(f"{L}@{d}", {}).get("accuracy", np.nan) for L in lengths for d in depths]
                         for r in done.values()], dtype=float)
        ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, "" if np.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if v < 0.6 else "black")
        ax.set_xticks(range(grid.shape[1]))
        ax.set_xticklabels([f"{L}\n{d:.0%}" for L in lengths for d in depths], fontsize=7)
        ax.set_yticks(range(len(done)))
        ax.set_yticklabels([r["label"] for r in done.values()], fontsize=7)
        ax.set_xlabel("prompt length (tokens) / key depth")
        ax.set_title("pass-key accuracy per length and depth", fontsize=9)
        fig.tight_layout()
        fig.savefig(f"{out}_retrieval_depth.png", dpi=110)
        plt.close(fig)


def main():
    pc.stop_on_sigterm()
    args = parse_args()
    start = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    bench = pc.Bench(args.binary, args.model, args.threads)
    configs = pc.configs(bench.info)
    run = {"source": pc.source_state(), "machine": pc.machine(), "args": vars(args),
           "server_policy_support": bench.implemented()}
    result = {"benchmark": "policy_quality", "model": Path(args.model).name, "binary": str(args.binary),
              "threads": args.threads, **run,
              "policies": {n: {"label": label, "policy": p} for n, (label, p) in configs.items()},
              "context_length": bench.info.context_length, "perplexity": {"results": {}}, "retrieval": {}}
    earlier = None
    if args.merge and out.with_suffix(".json").exists():
        earlier = json.loads(out.with_suffix(".json").read_text())
        earlier.setdefault("runs", [{k: earlier.get(k) for k in run}])

    def save():
        result["elapsed_s"] = time.perf_counter() - start
        doc = result
        if earlier is not None:  # this run's policies replace the earlier run's entries for them
            doc = json.loads(json.dumps(earlier))
            doc["runs"] = earlier["runs"] + [{**run, "elapsed_s": result["elapsed_s"]}]
            doc["policies"].update(result["policies"])
            for part in ("perplexity", "retrieval"):
                if result[part].get("results"):
                    doc.setdefault(part, {}).setdefault("results", {}).update(result[part]["results"])
                    for k, v in result[part].items():
                        if k != "results":
                            doc[part].setdefault(k, v)
            for k in ("source", "server_policy_support"):
                doc[k] = run[k]
        out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
        return doc

    print(f"policy_quality: {result['model']} on {bench.info.backend}, {args.threads} threads; "
          f"server says implemented: {[n for n, ok in result['server_policy_support'].items() if ok]}", flush=True)
    try:
        if not args.skip_ppl:
            run_perplexity(bench, args, configs, select(args.ppl_policies, configs), result, save, start)
        if not args.skip_retrieval:
            run_retrieval(bench, args, configs, select(args.retrieval_policies, configs), result, save, start)
    finally:
        bench.stop()
        doc = save()
    plot(doc, str(out), {**configs, **{n: (p["label"], p["policy"]) for n, p in doc["policies"].items()}})
    print(f"done in {pc.clock(start)}: {out.with_suffix('.json')}, {out}_ppl.png, {out}_retrieval.png", flush=True)


if __name__ == "__main__":
    main()
