"""The attention policies the reference and engine tests run, on the tiny
model of tiny_llama.py (4 layers x 4 query heads, 2 KV heads), and the token
sequence they run on: BOS (the model's attention sink) and ~100 tokens of a
real text, so that windows (16-24 tokens) and KV pages (16 tokens) matter.

Each case is a dict in the proto's JSON form (json_format.ParseDict turns it
into an AttentionPolicy message)."""
from functools import lru_cache
from pathlib import Path

import numpy as np

SEQUENCE_TOKENS = 100   # Score input, and the prompt of Generate
GENERATE_TOKENS = 16    # greedy tokens after that prompt
TEXT = Path("/usr/share/common-licenses/Apache-2.0")

N_LAYERS, N_HEADS = 4, 4
TEMPERATURES = [0.6, 1.5, 1.0, 0.8,
                1.25, 0.7, 2.0, 1.0,
                1.0, 0.9, 1.4, 0.5,
                1.1, 0.75, 1.0, 1.6]
SINK_LOGITS = [-1.0, 0.5, 2.0, 0.0,
               1.0, -2.0, 0.0, 3.0,
               0.5, 0.5, -0.5, 1.5,
               2.5, 0.0, -1.0, 1.0]


def tokens(*spans):
    return [{"begin": b, "end": e, "unit": "TOKENS"} for b, e in spans]


# Every policy of DESIGN §4 alone, with defaults and with explicit heads.
SINGLE = {
    "streaming_original": {"streaming": {"sink_tokens": 4, "window_tokens": 24, "positions": "ORIGINAL"}},
    "streaming_original_no_sink": {"streaming": {"sink_tokens": 0, "window_tokens": 20, "positions": "ORIGINAL"}},
    "streaming_cache": {"streaming": {"sink_tokens": 4, "window_tokens": 24, "positions": "CACHE"}},
    "streaming_default_positions": {"streaming": {"window_tokens": 32}},  # sink 4, positions CACHE
    "virtual_sink": {"virtual_sink": {"logit": 1.0}},
    "virtual_sink_off_by_one": {"virtual_sink": {}},
    "virtual_sink_per_head": {"virtual_sink": {"per_head_logits": SINK_LOGITS}},
    "act_default": {"act": {}},  # beta 0.4, tau 0.1, layers 2 .. L-2 (= [2] here), every head
    "act_heads": {"act": {"beta": 0.2, "tau": 0.165, "layers": [1, 2, 3], "heads": [0, 2, 3]}},
    "zero_tuning": {"zero_tuning": {"gamma": 0.3}},
    "zero_tuning_heads": {"zero_tuning": {"gamma": 3.0, "layers": [0, 2], "heads": [1, 3]}},
    "temperature": {"temperature": {"factors": TEMPERATURES}},
    "emphasis": {"emphasis": {"spans": tokens((10, 30), (60, 72)), "alpha": 0.1}},
    "emphasis_heads": {"emphasis": {"spans": tokens((40, 55)), "layers": [1, 3], "heads": [0, 2]}},
    "duo": {"duo": {"retrieval_heads": [{"layer": 0, "head": 1}, {"layer": 1, "head": 0}, {"layer": 2, "head": 3},
                                        {"layer": 3, "head": 2}], "sink_tokens": 4, "recent_tokens": 16}},
    "sparse": {"sparse": {"token_budget": 32, "dense_layers": 1}},
    "sparse_default_dense_layers": {"sparse": {"token_budget": 64}},
    "linear": {"linear": {"window_tokens": 16, "sink_tokens": 4}},
}

# Combinations: sink/mode decide V(i), calibration/steering add biases, ACT reweights.
COMBINED = {
    "streaming+virtual_sink+zero_tuning+emphasis": {
        "streaming": {"sink_tokens": 4, "window_tokens": 24, "positions": "ORIGINAL"},
        "virtual_sink": {"logit": 0.5},
        "zero_tuning": {"gamma": 0.5},
        "emphasis": {"spans": tokens((70, 90)), "alpha": 0.2},
    },
    "temperature+zero_tuning+emphasis": {
        "temperature": {"factors": TEMPERATURES},
        "zero_tuning": {"gamma": 2.0, "layers": [1, 2]},
        "emphasis": {"spans": tokens((5, 25)), "alpha": 0.05, "heads": [1, 2]},
    },
    "streaming+temperature": {
        "streaming": {"sink_tokens": 2, "window_tokens": 16, "positions": "ORIGINAL"},
        "temperature": {"factors": TEMPERATURES},
    },
    "act+zero_tuning+emphasis": {
        "act": {"beta": 0.3, "tau": 0.125, "layers": [2, 3]},
        "zero_tuning": {"gamma": 0.5, "layers": [0, 3]},
        "emphasis": {"spans": tokens((30, 60)), "alpha": 0.3},
    },
    "duo+virtual_sink+temperature": {
        "duo": {"retrieval_heads": [{"layer": 1, "head": 1}, {"layer": 2, "head": 0}], "sink_tokens": 2,
                "recent_tokens": 24},
        "virtual_sink": {"per_head_logits": SINK_LOGITS},
        "temperature": {"factors": TEMPERATURES},
    },
    "sparse+zero_tuning+emphasis+virtual_sink": {
        "sparse": {"token_budget": 48, "dense_layers": 2},  # 32/1 puts a page selection at a near-tie
        "zero_tuning": {"gamma": 0.5},
        "emphasis": {"spans": tokens((20, 50)), "alpha": 0.2},
        "virtual_sink": {"logit": 1.0},
    },
    "streaming_cache+zero_tuning": {
        "streaming": {"sink_tokens": 4, "window_tokens": 20, "positions": "CACHE"},
        "zero_tuning": {"gamma": 2.0},
    },
    "linear+virtual_sink": {
        "linear": {"window_tokens": 24, "sink_tokens": 2},
        "virtual_sink": {"logit": 0.0},
    },
}

ALL = {**SINGLE, **COMBINED}

# Policies that only act at decode (Quest): Score (prefill only) equals dense.
DECODE_ONLY = {name for name, p in ALL.items() if "sparse" in p and not set(p) - {"sparse"}}


@lru_cache(maxsize=None)
def sequence(model_path, n=SEQUENCE_TOKENS):
    """BOS + the first n-1 tokens of the Apache license text, with the model's tokenizer."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(model_path), vocab_only=True, verbose=False)
    body = llm.tokenize(TEXT.read_bytes()[:8000], add_bos=False, special=False)
    return tuple([llm.token_bos()] + list(body[:n - 1]))


def max_abs(a, b):
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))
