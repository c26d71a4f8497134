#!/usr/bin/env python3
"""Markdown tables from bench/results/policy_quality.json and policy_decode.json
(what docs/policies.md quotes). Usage:
  .venv/bin/python bench/policy_report.py [--quality PATH] [--decode PATH]
"""
import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def status_text(entry):
    s = entry.get("status", "-")
    return "not implemented" if s == "unimplemented" else s


def quality_tables(q):
    out = []
    ppl = q.get("perplexity", {}).get("results", {})
    texts = q.get("perplexity", {}).get("texts", {})
    inside = [t for t in texts if "beyond" not in t]
    long_text = next((t for t in inside if t.startswith("licenses-")), None)
    if ppl:
        dense = ppl.get("dense", {})
        head = ["policy"] + [f"{t} ({texts[t]} tok)" for t in inside]
        if long_text:
            head += [f"{long_text} vs dense", f"{long_text}, tokens >= 1024"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for name, r in ppl.items():
            label = q["policies"][name]["label"]
            first = next(iter(r.values()))
            if first.get("status") != "ok" and all(e.get("status") == first.get("status") for e in r.values()):
                out.append(f"| {label} | " + " | ".join([status_text(first)] + [""] * (len(head) - 2)) + " |")
                continue
            cells = [f"{r[t]['ppl']:.3f}" if r.get(t, {}).get("status") == "ok" else status_text(r.get(t, {}))
                     for t in inside]
            if long_text:
                e, d = r.get(long_text, {}), dense.get(long_text, {})
                if e.get("status") == "ok" and d.get("status") == "ok":
                    cells.append(f"{(e['ppl'] / d['ppl'] - 1) * 100:+.1f} %")
                    cells.append(f"{e['ppl_from_1024']:.3f}" if e.get("ppl_from_1024") else "-")
                else:
                    cells += ["", ""]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        beyond = [t for t in texts if "beyond" in t]
        for t in beyond:
            out.append("")
            out.append(f"Past the model's context ({q['context_length']} tokens): {t}, {texts[t]} tokens.")
            out.append("")
            out.append("| policy | perplexity (all) | tokens < context | tokens >= context |")
            out.append("|---|---|---|---|")
            for name, r in ppl.items():
                if t not in r:
                    continue
                e = r[t]
                label = q["policies"][name]["label"]
                if e.get("status") == "ok":
                    out.append(f"| {label} | {e['ppl']:.3f} | {e['ppl_inside_context']:.3f} | "
                               f"{e['ppl_beyond_context']:.3f} |")
                else:
                    msg = e.get("message", "")
                    out.append(f"| {label} | {status_text(e)}: `{msg}` | | |")
    rr = q.get("retrieval", {})
    if rr.get("results"):
        lengths, depths = rr["lengths"], rr["depths"]
        out.append("")
        out.append(f"Pass-key accuracy, correct / trials over depths {', '.join(f'{d:.0%}' for d in depths)} "
                   f"({rr['trials']} trial(s) per depth):")
        out.append("")
        head = ["policy"] + [f"L={L}" for L in lengths] + ["all"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for name, r in rr["results"].items():
            if r.get("status") != "ok":
                out.append(f"| {r['label']} | " + " | ".join([status_text(r)] + [""] * len(lengths)) + " |")
                continue
            cells, tot_ok, tot_n = [], 0, 0
            for L in lengths:
                trials = [t for c in r["cells"].values() if c["length"] == L for t in c["trials"] if "correct" in t]
                ok = sum(t["correct"] for t in trials)
                tot_ok, tot_n = tot_ok + ok, tot_n + len(trials)
                cells.append(f"{ok}/{len(trials)}")
            cells.append(f"{tot_ok}/{tot_n} ({tot_ok / tot_n:.0%})" if tot_n else "-")
            out.append(f"| {r['label']} | " + " | ".join(cells) + " |")
        out.append("")
        out.append("By depth (correct / trials, all lengths):")
        out.append("")
        head = ["policy"] + [f"depth {d:.0%}" for d in depths]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for name, r in rr["results"].items():
            if r.get("status") != "ok":
                continue
            cells = []
            for d in depths:
                trials = [t for c in r["cells"].values() if c["depth"] == d for t in c["trials"] if "correct" in t]
                cells.append(f"{sum(t['correct'] for t in trials)}/{len(trials)}")
            out.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def decode_tables(d):
    out = ["| policy | decode tok/s (server ITL, best of rounds) | vs dense | decode steps vs dense | "
           "client-seen vs dense | §7 target (>= 0.95x) |", "|---|---|---|---|---|---|"]
    for name, e in d["speed"].items():
        if e.get("status") != "ok":
            out.append(f"| {e['label']} | {status_text(e)} | | | | |")
            continue
        target = ("met" if e["meets_target"] else "**missed**") if "meets_target" in e else "-"
        steps, client = e.get("decode_step_tok_s_ratio_to_dense"), e.get("client_tok_s_ratio_to_dense")
        out.append(f"| {e['label']} | {e['best_decode_tok_s']:.1f} | {e['ratio_to_dense']:.3f}x | "
                   f"{f'{steps:.3f}x' if steps else '-'} | {f'{client:.3f}x' if client else '-'} | {target} |")
    mem = d.get("memory", {})
    if mem.get("results"):
        out.append("")
        out.append(f"KV memory held by one sequence, {mem['prompt_tokens']}-token prompt + {mem['gen_tokens']} "
                   f"generated tokens (page = {mem['kv_page_size']} tokens = {mem['page_bytes'] / 1024:.0f} KiB):")
        out.append("")
        out.append("| policy | peak pages | peak KV (MiB) | vs dense | pages at the end | decode tok/s over the run |")
        out.append("|---|---|---|---|---|---|")
        for name, e in mem["results"].items():
            if e.get("status") != "ok":
                out.append(f"| {e['label']} | {status_text(e)} | | | | |")
                continue
            ratio = f"{e['peak_ratio_to_dense']:.3f}x" if e.get("peak_ratio_to_dense") else "-"
            out.append(f"| {e['label']} | {e['peak_pages']} | {e['peak_kv_mib']:.1f} | {ratio} | "
                       f"{e['final_pages']} | {e['decode_tok_s']:.1f} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quality", default=str(ROOT / "bench/results/policy_quality.json"))
    ap.add_argument("--decode", default=str(ROOT / "bench/results/policy_decode.json"))
    args = ap.parse_args()
    for path, fn in ((args.quality, quality_tables), (args.decode, decode_tables)):
        p = Path(path)
        if p.exists():
            data = json.loads(p.read_text())
            print(f"<!-- {p.name}: {data.get('elapsed_s', 0) / 60:.1f} min, source {data.get('source')} -->")
            print(fn(data))
            print()


if __name__ == "__main__":
    main()
