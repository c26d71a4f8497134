"""A tiny random Llama GGUF for policy tests: F32 weights, the default
model's tokenizer, written with the gguf package's GGUFWriter.

Shape: 4 layers, hidden 64, 4 query heads, 2 KV heads (GQA, 2 query heads per
KV head), head_dim 16, ffn 128, RoPE theta 10000, context 512, RMSNorm eps
1e-5, tied embeddings, vocab 49152 (the SmolLM2 tokenizer, so the engine and
llama.cpp load it like any real model).

Tensors are in llama.cpp's llama layout. llama.cpp's convert script permutes
the rows of Q and K so that RoPE rotates adjacent pairs (2i, 2i+1) ("normal"
RoPE); the weights here are random, so the model is simply defined in that
GGUF layout and policy_reference.py rotates adjacent pairs too.

The weights are scaled so that attention is far from uniform (large Q/K),
attention outputs move the residual stream, and the logits are spread a few
nats, so that every attention policy changes the outputs visibly. Like a
trained model, the tiny one has an attention sink: the BOS token's key is
aligned, in the slowest-turning RoPE pairs, with a component every query
shares (a rank-1 term in W_q and W_k over two fixed embedding directions), so
a sequence that starts with BOS puts a large share of attention on token 0,
and "." and "," are weaker, secondary sinks.

usage: tiny_llama.py OUT.gguf [--seed N]
"""
import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_SOURCE = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

N_LAYERS = 4
HIDDEN = 64
N_HEADS = 4
N_KV_HEADS = 2
HEAD_DIM = HIDDEN // N_HEADS  # 16
FFN = 128
ROPE_THETA = 10000.0
CONTEXT = 512
RMS_EPS = 1e-5
SEED = 1234

# Standard deviations of the random weights (inputs to every matmul are
# RMS-normalised to ~1, so a weight std s over fan-in n gives outputs of std
# s*sqrt(n)).
EMBED_STD = 1.0
OUTPUT_NORM = 0.35  # output_norm weight: logits std ≈ 0.35 * 8 ≈ 3 through the tied embeddings
QK_STD = 0.2        # q, k components std ≈ 1.6 -> attention logits std ≈ 2.5: peaked, not uniform
V_STD = 0.25
O_STD = 0.1
FFN_STD = 0.1
# The attention sink. Hidden dims 0 and 1 are reserved: no layer writes them
# (rows 0, 1 of attn_output and ffn_down are zero). Every embedding holds
# COMMON_AMP in dim 0, the BOS embedding SINK_AMP in dim 1. W_q maps dim 0 and
# W_k maps dim 1 onto one unit vector u_g per KV head, in the two slowest RoPE
# pairs, with gain SINK_GAIN each; layer l's attn_norm weight on dims 0, 1 is
# SINK_NORM[l], making up for the residual stream's growth.
COMMON_AMP = 1.0
SINK_AMP = 3.0
SINK_GAIN = 3.0
SINK_NORM = (1.0, 1.55, 2.0, 2.55)
# Secondary sinks, as trained models have on punctuation (what ACT finds and
# calibrates): these tokens hold SECONDARY_SINK_AMP in dim 1.
SECONDARY_SINKS = (".", ",")
SECONDARY_SINK_AMP = 1.8


def _fields(reader, key):
    return reader.fields[key] if key in reader.fields else None


def _string(field):
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def _string_array(field):
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def _int_array(field):
    return [int(field.parts[i][0]) for i in field.data]


def _scalar(field):
    return field.parts[field.data[0]][0].item()


def tokenizer_metadata(source=TOKENIZER_SOURCE):
    """The tokenizer keys of a GGUF as plain Python values."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    meta = {
        "model": _string(reader.fields["tokenizer.ggml.model"]),
        "pre": _string(reader.fields["tokenizer.ggml.pre"]) if _fields(reader, "tokenizer.ggml.pre") else None,
        "tokens": _string_array(reader.fields["tokenizer.ggml.tokens"]),
        "token_type": _int_array(reader.fields["tokenizer.ggml.token_type"]),
        "merges": _string_array(reader.fields["tokenizer.ggml.merges"]),
    }
    for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"):
        field = _fields(reader, f"tokenizer.ggml.{key}")
        meta[key] = int(_scalar(field)) if field else None
    for key in ("add_bos_token", "add_space_prefix"):
        field = _fields(reader, f"tokenizer.ggml.{key}")
        meta[key] = bool(_scalar(field)) if field else None
    field = _fields(reader, "tokenizer.chat_template")
    meta["chat_template"] = _string(field) if field else None
    return meta


def random_weights(vocab, sink_token, secondary_sinks=(), seed=SEED):
    """name -> float32 array in numpy order (GGUF dims reversed: {cols, rows} -> (rows, cols))."""
    rng = np.random.default_rng(seed)

    def normal(std, *shape):
        return rng.standard_normal(shape) * std

    def norm_weight():
        return 1.0 + 0.1 * rng.standard_normal(HIDDEN)

    kv_dim = N_KV_HEADS * HEAD_DIM
    group = N_HEADS // N_KV_HEADS
    embd = normal(EMBED_STD, vocab, HIDDEN)
    embd[:, 0:2] = 0.0
    embd[:, 0] = COMMON_AMP
    embd[list(secondary_sinks), 1] = SECONDARY_SINK_AMP
    embd[sink_token, 1] = SINK_AMP
    w = {"token_embd.weight": embd}
    for layer in range(N_LAYERS):
        b = f"blk.{layer}."
        attn_norm = norm_weight()
        attn_norm[0:2] = SINK_NORM[layer]
        wq, wk = normal(QK_STD, HIDDEN, HIDDEN), normal(QK_STD, kv_dim, HIDDEN)
        wq[:, 0:2] = 0.0
        wk[:, 0:2] = 0.0
        for g in range(N_KV_HEADS):
            u = np.zeros(HEAD_DIM)
            u[HEAD_DIM - 4:] = rng.standard_normal(4)  # the two slowest RoPE pairs
            u /= np.linalg.norm(u)
            wk[g * HEAD_DIM:(g + 1) * HEAD_DIM, 1] = SINK_GAIN * u
            for h in range(g * group, (g + 1) * group):
                wq[h * HEAD_DIM:(h + 1) * HEAD_DIM, 0] = SINK_GAIN * u
        wo = normal(O_STD, HIDDEN, HIDDEN)
        wo[0:2] = 0.0
        down = normal(FFN_STD, HIDDEN, FFN)
        down[0:2] = 0.0
        w[b + "attn_norm.weight"] = attn_norm
        w[b + "attn_q.weight"] = wq
        w[b + "attn_k.weight"] = wk
        w[b + "attn_v.weight"] = normal(V_STD, kv_dim, HIDDEN)
        w[b + "attn_output.weight"] = wo
        w[b + "ffn_norm.weight"] = norm_weight()
        w[b + "ffn_gate.weight"] = normal(FFN_STD, FFN, HIDDEN)
        w[b + "ffn_up.weight"] = normal(FFN_STD, FFN, HIDDEN)
        w[b + "ffn_down.weight"] = down
    output_norm = OUTPUT_NORM * norm_weight()
    output_norm[0:2] = 0.0  # the reserved dims do not reach the logits
    w["output_norm.weight"] = output_norm
    return {name: a.astype(np.float32) for name, a in w.items()}


def write_tiny_llama(path, seed=SEED, tokenizer_source=TOKENIZER_SOURCE, context=CONTEXT):
    """Writes the tiny model to `path` (trained context `context`) and returns the path."""
    import gguf

    path = Path(path)
    tok = tokenizer_metadata(tokenizer_source)
    vocab = len(tok["tokens"])
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-random-llama")
    writer.add_block_count(N_LAYERS)
    writer.add_context_length(context)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(N_HEADS)
    writer.add_head_count_kv(N_KV_HEADS)
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    writer.add_tokenizer_model(tok["model"])
    if tok["pre"] is not None:
        writer.add_tokenizer_pre(tok["pre"])
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["token_type"])
    writer.add_token_merges(tok["merges"])
    if tok["bos_token_id"] is not None:
        writer.add_bos_token_id(tok["bos_token_id"])
    if tok["eos_token_id"] is not None:
        writer.add_eos_token_id(tok["eos_token_id"])
    if tok["unknown_token_id"] is not None:
        writer.add_unk_token_id(tok["unknown_token_id"])
    if tok["padding_token_id"] is not None:
        writer.add_pad_token_id(tok["padding_token_id"])
    if tok["add_bos_token"] is not None:
        writer.add_add_bos_token(tok["add_bos_token"])
    if tok["add_space_prefix"] is not None:
        writer.add_add_space_prefix(tok["add_space_prefix"])
    if tok["chat_template"] is not None:
        writer.add_chat_template(tok["chat_template"])

    secondary = [tok["tokens"].index(t) for t in SECONDARY_SINKS]
    for name, array in random_weights(vocab, tok["bos_token_id"], secondary, seed).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    write_tiny_llama(args.out, args.seed)
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
