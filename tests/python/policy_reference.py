"""The executable specification of attnserve's attention policies: a float64
numpy forward of a Llama GGUF with every policy of DESIGN.md §4, written
straight from its text and kept readable rather than fast.

    logprobs(model_path, token_ids, policy)      -> log p(token_i | tokens < i), first = 0
    logits(model_path, token_ids, policy)        -> [n, vocab] next-token logits
    greedy_decode(model_path, prompt_ids, n, policy) -> n greedy tokens

`policy` is a dict in the proto's JSON form (attention.proto), e.g.
    {"streaming": {"sink_tokens": 4, "window_tokens": 32, "positions": "ORIGINAL"},
     "zero_tuning": {"gamma": 0.5}}
Absent fields take the defaults the proto documents. Emphasis spans are token
ranges here ({"begin", "end"} with "unit": "TOKENS"); character spans need
the text's offsets and are the server's business.

`prompt_len` (default: the whole sequence) separates prompt from generated
tokens: ACT's sink set S comes from the prompt's attention, emphasis biases
prompt tokens only, and Quest selects pages only for decode queries (those
at positions >= prompt_len); prefill is dense. Every query is computed in one
pass over the whole sequence (the forward is causal, so this equals
incremental decoding).

Notation as in DESIGN §4: layer l, query head h, its KV head g = h // G
(G = n_heads / n_kv_heads), query position i, key position j, visible set
V(i), logits s_ij = q_i·k_j / sqrt(d) / t_h + b_hij, p = softmax over V(i)
plus an optional virtual sink exp(b_sink) in the denominator with a zero
value vector, o_i = Σ_j p_ij v_j. Reading choices where DESIGN is terse are
marked "Reading:" below.
"""
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PAGE_SIZE = 16  # the engine's KV page size; Quest's page granularity


# ----------------------------------------------------------------------------
# Model loading


@dataclass
class Config:
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope_dim: int
    ffn: int
    rope_base: float
    rms_eps: float
    context: int
    vocab: int


class Model:
    """A llama-architecture GGUF: config and dequantized tensors (float32,
    numpy order = GGUF dims reversed, i.e. (out_features, in_features))."""

    def __init__(self, path):
        import gguf

        self.path = Path(path)
        reader = gguf.GGUFReader(str(path))

        def scalar(key, default=None):
            field = reader.fields.get(key)
            return default if field is None else field.parts[field.data[0]][0].item()

        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
        if arch != "llama":
            raise ValueError(f"{path}: architecture {arch!r} is not llama")
        self.tensors = {}
        for t in reader.tensors:
            if t.tensor_type == gguf.GGMLQuantizationType.F32:
                data = np.asarray(t.data)
            else:
                data = gguf.quants.dequantize(t.data, t.tensor_type)
            rows = [int(d) for d in reversed(t.shape)]  # numpy order
            self.tensors[t.name] = np.asarray(data, dtype=np.float32).reshape(rows)
        n_heads = int(scalar("llama.attention.head_count"))
        hidden = int(scalar("llama.embedding_length"))
        head_dim = int(scalar("llama.attention.key_length", hidden // n_heads))
        self.config = Config(
            n_layers=int(scalar("llama.block_count")),
            hidden=hidden,
            n_heads=n_heads,
            n_kv_heads=int(scalar("llama.attention.head_count_kv", n_heads)),
            head_dim=head_dim,
            rope_dim=int(scalar("llama.rope.dimension_count", head_dim)),
            ffn=int(scalar("llama.feed_forward_length")),
            rope_base=float(scalar("llama.rope.freq_base", 10000.0)),
            rms_eps=float(scalar("llama.attention.layer_norm_rms_epsilon", 1e-5)),
            context=int(scalar("llama.context_length")),
            vocab=self.tensors["token_embd.weight"].shape[0],
        )

    def w(self, name):
        return self.tensors[name]

    @property
    def output_weight(self):
        return self.tensors.get("output.weight", self.tensors["token_embd.weight"])  # tied when absent


@functools.lru_cache(maxsize=4)
def load(path):
    return Model(path)


# ----------------------------------------------------------------------------
# Building blocks


def rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x, positions, base, rope_dim):
    """Adjacent-pair ("normal") RoPE: pair (2i, 2i+1) turns by pos * base^(-2i/rope_dim).
    x: [n, n_heads, head_dim]; positions: [n]."""
    x = x.copy()
    half = rope_dim // 2
    freqs = base ** (-2.0 * np.arange(half) / rope_dim)             # [half]
    angles = np.asarray(positions, dtype=np.float64)[:, None] * freqs  # [n, half]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    even, odd = x[..., 0:rope_dim:2].copy(), x[..., 1:rope_dim:2].copy()
    x[..., 0:rope_dim:2] = even * cos - odd * sin
    x[..., 1:rope_dim:2] = even * sin + odd * cos
    return x


def silu(x):
    return x / (1.0 + np.exp(-x))


def taylor2(x):
    """BASED's second-order Taylor feature map: φ(q)·φ(k) = 1 + x + x²/2 with
    x = q·k/sqrt(d), φ(x) = [1, x/d^(1/4), (x⊗x)/(sqrt(2)·sqrt(d))]."""
    return 1.0 + x + 0.5 * x * x


# ----------------------------------------------------------------------------
# The policy, resolved per layer and head


def _heads_of(spec, key, default):
    values = spec.get(key) or []
    return set(int(v) for v in values) if values else set(default)


@dataclass
class Plan:
    """Everything the attention of one sequence needs, from the policy dict."""

    cfg: Config
    policy: dict
    n: int
    prompt_len: int
    trace: dict = None  # when a dict: filled with ACT's sets and Quest's selections (see `trace`)

    def __post_init__(self):
        cfg, pol = self.cfg, self.policy
        L, H = cfg.n_layers, cfg.n_heads
        known = {"full", "streaming", "virtual_sink", "act", "zero_tuning", "temperature", "emphasis", "dense",
                 "duo", "sparse", "linear", "profile"}
        unknown = set(pol) - known
        if unknown:
            raise ValueError(f"unknown policy fields {sorted(unknown)}")
        if pol.get("profile"):
            raise NotImplementedError("profiles live on the server; name heads explicitly")

        # sink: streaming, sink_tokens default 4 (0 keeps no sink: window attention).
        s = pol.get("streaming")
        self.streaming = s is not None
        if s is not None:
            self.stream_sinks = int(s.get("sink_tokens", 4))
            self.stream_window = int(s["window_tokens"])
            self.cache_positions = s.get("positions", "CACHE") in ("CACHE", "POSITIONS_UNSPECIFIED", 0, 1)

        # virtual sink: logit b, or per-head logits (layer-major) replacing it; -inf = none.
        self.sink_logit = np.full((L, H), -np.inf)
        vs = pol.get("virtual_sink")
        if vs is not None:
            per_head = vs.get("per_head_logits") or []
            if per_head:
                self.sink_logit = np.asarray(per_head, dtype=np.float64).reshape(L, H)
            else:
                self.sink_logit[:] = float(vs.get("logit", 0.0))

        # act: beta, tau, layers (default 2 .. L-2 inclusive, as ACT's reference code's range(2, 31)
        # for 32 layers), heads (default all).
        self.act_heads = set()
        a = pol.get("act")
        if a is not None:
            self.act_beta = float(a.get("beta", 0.4))
            self.act_tau = float(a.get("tau", 0.1))
            layers = _heads_of(a, "layers", range(2, L - 1))
            heads = _heads_of(a, "heads", range(H))
            self.act_heads = {(l, h) for l in layers for h in heads}

        # zero_tuning: b_hi0 = ln(gamma) on the initial token.
        self.first_bias = np.zeros((L, H))
        z = pol.get("zero_tuning")
        if z is not None:
            for l in _heads_of(z, "layers", range(L)):
                for h in _heads_of(z, "heads", range(H)):
                    self.first_bias[l, h] = math.log(float(z["gamma"]))

        # temperature: head (l, h) logits divided by factors[l * H + h].
        self.temperature = np.ones((L, H))
        t = pol.get("temperature")
        if t is not None:
            self.temperature = np.asarray(t["factors"], dtype=np.float64).reshape(L, H)

        # emphasis: ln(alpha) on every prompt token outside the spans, for steered heads.
        self.outside_bias = np.zeros((L, H))
        self.in_spans = np.zeros(self.n, dtype=bool)
        e = pol.get("emphasis")
        if e is not None:
            for span in e["spans"]:
                if span.get("unit") not in ("TOKENS", 2):
                    raise NotImplementedError("the reference takes token spans (unit TOKENS)")
                self.in_spans[int(span.get("begin", 0)):int(span["end"])] = True
            alpha = float(e.get("alpha", 0.01))
            for l in _heads_of(e, "layers", range(L)):
                for h in _heads_of(e, "heads", range(H)):
                    self.outside_bias[l, h] = math.log(alpha)

        # mode
        self.duo = pol.get("duo")
        if self.duo is not None:
            self.duo_sinks = int(self.duo.get("sink_tokens", 64))
            self.duo_recent = int(self.duo.get("recent_tokens", 256))
            # Reading: HeadRef.head is a query head index, like every other `heads` list.
            self.duo_retrieval = {(int(r.get("layer", 0)), int(r.get("head", 0)))
                                  for r in self.duo.get("retrieval_heads", [])}
        self.sparse = pol.get("sparse")
        if self.sparse is not None:
            self.quest_pages = int(self.sparse["token_budget"]) // PAGE_SIZE
            self.quest_dense_layers = int(self.sparse.get("dense_layers", 2))
        self.linear = pol.get("linear")
        if self.linear is not None:
            self.linear_window = int(self.linear["window_tokens"])
            self.linear_sinks = int(self.linear.get("sink_tokens", 0))

    # -- V(i) ---------------------------------------------------------------

    def visible(self, layer, head):
        """[n, n] bool: key j visible to query i (causal, minus sink/mode evictions).
        Quest's page selection is applied separately (it needs the queries)."""
        n = self.n
        i, j = np.arange(n)[:, None], np.arange(n)[None, :]
        vis = j <= i
        if self.streaming:  # keep the first sink_tokens and the last window_tokens
            vis &= (j < self.stream_sinks) | (j > i - self.stream_window)
        if self.duo is not None and (layer, head) not in self.duo_retrieval:  # a streaming head
            vis &= (j < self.duo_sinks) | (j > i - self.duo_recent)
        return vis

    def page_seen_by(self, query):
        """Whether a page holds a key that the sink policy (streaming) leaves
        visible to `query`; None when every page does."""
        if not self.streaming:
            return None
        return lambda page: (page * PAGE_SIZE < self.stream_sinks
                             or (page + 1) * PAGE_SIZE - 1 > query - self.stream_window)

    def folded(self, layer, head):
        """[n, n] bool: keys the linear mode folds into its Taylor state (visible,
        but outside sinks + window)."""
        n = self.n
        i, j = np.arange(n)[:, None], np.arange(n)[None, :]
        if self.linear is None:
            return np.zeros((n, n), dtype=bool)
        return (j <= i) & (j >= self.linear_sinks) & (j <= i - self.linear_window)

    # -- b_hij --------------------------------------------------------------

    def bias(self, layer, head):
        n = self.n
        b = np.zeros((n, n))
        b[:, 0] += self.first_bias[layer, head]
        outside = np.zeros(n, dtype=bool)
        outside[:self.prompt_len] = ~self.in_spans[:self.prompt_len]
        b[:, outside] += self.outside_bias[layer, head]
        return b

    def key_positions_cache(self, query):
        """StreamingLLM positions=CACHE: for query i, the slot index of each kept
        key (its rank among the kept tokens) and the query's own slot."""
        kept = [j for j in range(query + 1) if j < self.stream_sinks or j > query - self.stream_window]
        slots = np.full(query + 1, -1)
        slots[kept] = np.arange(len(kept))
        return slots, slots[query]


# ----------------------------------------------------------------------------
# Attention of one layer under the plan


def quest_selected_pages(q_group, k_cache, query, n_pages_budget, trace=None, candidate=None):
    """Quest at decode for one KV head: score each page of keys before the
    current page by Σ_h Σ_d max(q_hd·max_d, q_hd·min_d) over the group's query
    heads, keep the top n_pages_budget, plus the current page (the one holding
    the query's own position). Reading: q and k as cached, after RoPE and
    before any scaling; the current page is not a candidate but always read;
    only pages holding a key the sink policy leaves visible are candidates
    (`candidate(page)`; every page without one), and ties go to the earlier page.
    q_group: [G, d] (after RoPE), k_cache: [query+1, d] (after RoPE).
    Returns a bool mask over keys 0..query."""
    current = query // PAGE_SIZE
    mask = np.zeros(query + 1, dtype=bool)
    pages = [p for p in range(current) if candidate is None or candidate(p)]
    if len(pages) <= n_pages_budget:  # every candidate fits in the budget: dense
        mask[:] = True
        return mask
    scores = []
    for page in pages:
        keys = k_cache[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
        kmax, kmin = keys.max(axis=0), keys.min(axis=0)
        scores.append(np.maximum(q_group * kmax, q_group * kmin).sum())
    order = np.argsort(-np.asarray(scores), kind="stable")
    top = [pages[k] for k in order[:n_pages_budget]]
    if trace is not None:  # how close the last page taken is to the first page left out
        trace["gap"] = float(scores[order[n_pages_budget - 1]] - scores[order[n_pages_budget]])
        trace["pages"] = sorted(int(p) for p in top)
    for page in [*top, current]:
        mask[page * PAGE_SIZE:(page + 1) * PAGE_SIZE] = True
    return mask


def attention(plan, layer, q_raw, k_raw, v, cfg, kv_fp16=False):
    """q_raw [n, H, d], k_raw [n, KV, d] before RoPE, v [n, KV, d] -> [n, H, d].
    kv_fp16 rounds keys (after RoPE) and values to float16, as the engine's
    KV cache stores them; the policy semantics never depend on it."""
    n, H, d = q_raw.shape
    G = cfg.n_heads // cfg.n_kv_heads
    positions = np.arange(n)
    q = rope(q_raw, positions, cfg.rope_base, cfg.rope_dim)
    k = rope(k_raw, positions, cfg.rope_base, cfg.rope_dim)
    if kv_fp16:
        k = k.astype(np.float16).astype(np.float64)
        v = v.astype(np.float16).astype(np.float64)
    scale = 1.0 / math.sqrt(d)

    # Quest: per KV head, which keys each decode query reads (prefill stays dense).
    quest = None
    if plan.sparse is not None and layer >= plan.quest_dense_layers:
        quest = np.ones((cfg.n_kv_heads, n, n), dtype=bool)
        for g in range(cfg.n_kv_heads):
            for i in range(plan.prompt_len, n):
                t = {} if plan.trace is not None else None
                quest[g, i, :i + 1] = quest_selected_pages(q[i, g * G:(g + 1) * G], k[:i + 1, g], i,
                                                           plan.quest_pages, t, plan.page_seen_by(i))
                if t:
                    plan.trace[("quest", layer, g, i)] = t

    out = np.zeros_like(q)
    for h in range(H):
        g = h // G
        t = plan.temperature[layer, h]
        # Reading: the temperature divides q·k/sqrt(d); the biases are added after (the
        # kernels' hook order), so zero_tuning's gamma and emphasis's alpha keep their meaning.
        if plan.streaming and plan.cache_positions:
            x = np.full((n, n), -np.inf)
            for i in range(n):
                slots, own = plan.key_positions_cache(i)
                kept = np.nonzero(slots >= 0)[0]
                qi = rope(q_raw[i:i + 1, h:h + 1], [own], cfg.rope_base, cfg.rope_dim)[0, 0]
                kj = rope(k_raw[kept, g:g + 1], slots[kept], cfg.rope_base, cfg.rope_dim)[:, 0]
                x[i, kept] = kj @ qi * scale / t
        else:
            x = q[:, h] @ k[:, g].T * scale / t
        vis = plan.visible(layer, h)
        if quest is not None:
            vis &= quest[g]
        folded = plan.folded(layer, h)
        exact = vis & ~folded
        b = plan.bias(layer, h)
        s = x + b

        # One normalisation over the exact keys' exp(s), the folded keys' Taylor
        # weights and the virtual sink's exp(b_sink), all shifted by the same max m.
        m = np.max(np.where(exact, s, -np.inf), axis=1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        w = np.where(exact, np.exp(np.where(exact, s - m, 0.0)), 0.0)
        # Reading: a folded key keeps its per-key bias as a weight exp(b) on its Taylor term.
        w += np.where(folded & vis, taylor2(np.where(folded, x, 0.0)) * np.exp(b - m), 0.0)
        denom = w.sum(axis=1, keepdims=True) + np.exp(plan.sink_logit[layer, h] - m)
        p = w / denom

        if (layer, h) in plan.act_heads:
            p = act_reweight(p, vis, plan, (layer, h))
        out[:, h] = p @ v[:, g]
    return out


def act_reweight(p, vis, plan, head=None):
    """ACT (DESIGN §4, as GATECH-EIC/ACT's atten_process_eval does it).

    From the prompt's attention (queries i < P): token j's mean attention is
    Σ_i p_ij / (number of prompt queries that see j; N - j when dense). Tokens
    whose mean exceeds tau are sink candidates; the first of them (normally
    token 0, the real sink) is dropped, leaving S. For every query (prefill and
    decode): p'_ij = beta·p_ij on S, and the removed mass (1-beta)·P_S goes to
    the other visible tokens in proportion to p_ij:
    p'_ij = p_ij·(1 + (1-beta)·P_S/P_rest) (P_rest = 1 - P_S without a
    virtual sink, whose own mass is left alone).
    Reading: where a sink or mode hides j from some queries, the count is of
    the prompt queries that do see j. p is the head's distribution after every
    other hook (biases, temperature, virtual sink)."""
    P = plan.prompt_len
    seen_by = vis[:P, :P].sum(axis=0)
    mean = p[:P, :P].sum(axis=0) / np.maximum(seen_by, 1)
    candidates = np.nonzero(mean > plan.act_tau)[0]
    S = candidates[1:]
    if plan.trace is not None:  # S, and how close any token's mean is to tau
        plan.trace[("act", *head)] = {"S": [int(j) for j in S], "margin": float(np.min(np.abs(mean - plan.act_tau)))}
    if len(S) == 0:
        return p
    in_s = np.zeros(p.shape[1], dtype=bool)
    in_s[S] = True
    p_s = p[:, in_s].sum(axis=1, keepdims=True)
    p_rest = np.where(vis & ~in_s, p, 0.0).sum(axis=1, keepdims=True)
    beta = plan.act_beta
    ok = (p_s > 0) & (p_rest > 0)
    rest_scale = np.where(ok, 1.0 + (1.0 - beta) * p_s / np.where(ok, p_rest, 1.0), 1.0)
    return np.where(in_s[None, :], np.where(ok, beta, 1.0) * p, rest_scale * p)


# ----------------------------------------------------------------------------
# The forward and its entry points


def forward_logits(model, token_ids, policy=None, prompt_len=None, kv_fp16=False, trace=None):
    """[n, vocab] float64 logits of a llama GGUF under `policy`."""
    cfg = model.config
    ids = np.asarray(token_ids, dtype=np.int64)
    n = len(ids)
    plan = Plan(cfg, policy or {}, n, n if prompt_len is None else int(prompt_len), trace)
    H, KV, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    x = model.w("token_embd.weight")[ids].astype(np.float64)
    for layer in range(cfg.n_layers):
        b = f"blk.{layer}."
        h = rms_norm(x, model.w(b + "attn_norm.weight"), cfg.rms_eps)
        q = (h @ model.w(b + "attn_q.weight").T).reshape(n, H, d)
        k = (h @ model.w(b + "attn_k.weight").T).reshape(n, KV, d)
        v = (h @ model.w(b + "attn_v.weight").T).reshape(n, KV, d)
        o = attention(plan, layer, q, k, v, cfg, kv_fp16).reshape(n, H * d)
        x = x + o @ model.w(b + "attn_output.weight").T
        h = rms_norm(x, model.w(b + "ffn_norm.weight"), cfg.rms_eps)
        gate = h @ model.w(b + "ffn_gate.weight").T
        up = h @ model.w(b + "ffn_up.weight").T
        x = x + (silu(gate) * up) @ model.w(b + "ffn_down.weight").T
    x = rms_norm(x, model.w("output_norm.weight"), cfg.rms_eps)
    return x @ model.output_weight.T


def logits(model_path, token_ids, policy=None, prompt_len=None, kv_fp16=False):
    return forward_logits(load(str(model_path)), token_ids, policy, prompt_len, kv_fp16)


def trace(model_path, token_ids, policy, prompt_len=None):
    """What the policy decided on this sequence, for checking that a comparison
    with the engine is not at a knife's edge:
      ("act", layer, head)        -> {"S": [...], "margin": min_j |mean_j - tau|}
      ("quest", layer, g, query)  -> {"pages": [...], "gap": score of the last page taken
                                      minus that of the first left out}"""
    out = {}
    forward_logits(load(str(model_path)), token_ids, policy, prompt_len, trace=out)
    return out


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def logprobs(model_path, token_ids, policy=None, prompt_len=None, kv_fp16=False):
    """log p(token_i | tokens < i) for every i; the first is 0 (ScoreResponse.token_logprobs)."""
    ids = np.asarray(token_ids, dtype=np.int64)
    lp = log_softmax(logits(model_path, ids, policy, prompt_len, kv_fp16))
    out = np.zeros(len(ids))
    out[1:] = lp[np.arange(len(ids) - 1), ids[1:]]
    return out


def greedy_decode(model_path, prompt_ids, n_tokens, policy=None, kv_fp16=False):
    """n_tokens greedy tokens after the prompt (no stop on EOS), recomputing the
    whole sequence each step; returns (tokens, logprob of each, top-2 margin of each)."""
    ids = list(prompt_ids)
    tokens, lps, margins = [], [], []
    for _ in range(n_tokens):
        row = logits(model_path, ids, policy, len(prompt_ids), kv_fp16)[-1]
        top2 = np.sort(row)[-2:]
        tok = int(row.argmax())
        tokens.append(tok)
        lps.append(float(log_softmax(row)[tok]))
        margins.append(float(top2[1] - top2[0]))
        ids.append(tok)
    return tokens, lps, margins
