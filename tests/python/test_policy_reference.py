"""Self-tests of the numpy policy reference (policy_reference.py): its dense
forward against llama.cpp on the tiny model and on the default model's F32
variant, policy identities that must hold exactly, cross-checks of the
formulas against the papers' reference algorithms, and that every policy
case the engine tests use changes the outputs visibly."""
import copy
import math

import numpy as np
import pytest

import policy_cases as cases
import policy_reference as ref
from conftest import LICENSE_TEXTS, QUANTIZED_DIR, THREADS

GGML_TYPE_F32 = 0
F32_KV_LOGIT_TOL = 1e-3   # measured: 1.2e-4 (tiny), 3.6e-5 (SmolLM2 F32)
F16_KV_LOGIT_TOL = 0.1    # llama.cpp's default fp16 KV (it also rounds q and p to fp16): measured 0.02-0.05
IDENTITY_TOL = 1e-9
VISIBLE_CHANGE = 0.2      # every policy case moves some logprob by at least this (nats)
ACT_MIN_MARGIN = 0.002    # no token's mean attention within this of tau in the ACT cases
# No Quest page selection within this of a tie (score of the last page taken
# minus the first left out): the engine scores pages from fp16 keys in float.
QUEST_MIN_GAP = 0.04


def _llama_cpp(path, f32_kv, n_ctx=512):
    from llama_cpp import Llama

    kv = {"type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32} if f32_kv else {}
    return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=512, n_threads=THREADS, logits_all=True,
                 verbose=False, seed=0, **kv)


def _llama_cpp_logits(llm, ids):
    llm.reset()
    llm.eval(list(ids))
    return np.array(llm.scores[:len(ids)], dtype=np.float64)


@pytest.fixture(scope="module")
def ids(tiny_model):
    return list(cases.sequence(tiny_model))


@pytest.fixture(scope="module")
def dense(tiny_model, ids):
    return ref.logprobs(tiny_model, ids)


# -- dense forward vs llama.cpp -------------------------------------------------


@pytest.mark.parametrize("f32_kv", [True, False], ids=["f32_kv", "f16_kv"])
def test_tiny_model_dense_matches_llama_cpp(tiny_model, ids, f32_kv):
    ours = ref.logits(tiny_model, ids)
    theirs = _llama_cpp_logits(_llama_cpp(tiny_model, f32_kv), ids)
    delta = np.abs(ours - theirs).max()
    print(f"\ntiny model, {len(ids)} tokens, llama.cpp {'f32' if f32_kv else 'f16'} KV: max |dlogit| {delta:.2e}")
    assert (ours.argmax(1) == theirs.argmax(1)).all()
    assert delta < (F32_KV_LOGIT_TOL if f32_kv else F16_KV_LOGIT_TOL)


@pytest.mark.parametrize("f32_kv", [True, False], ids=["f32_kv", "f16_kv"])
def test_default_model_f32_dense_matches_llama_cpp(f32_kv):
    path = QUANTIZED_DIR / "SmolLM2-135M-Instruct.F32.gguf"
    if not path.exists():
        pytest.fail(f"{path} is missing: run tests/python/make_quantized_models.py")
    llm = _llama_cpp(path, f32_kv)
    ids = llm.tokenize(LICENSE_TEXTS[0].read_bytes()[:4000], add_bos=True)[:64]
    theirs = _llama_cpp_logits(llm, ids)
    ours = ref.logits(path, ids)
    delta = np.abs(ours - theirs).max()
    print(f"\nSmolLM2-135M F32, {len(ids)} tokens, llama.cpp {'f32' if f32_kv else 'f16'} KV: max |dlogit| {delta:.2e}")
    assert (ours.argmax(1) == theirs.argmax(1)).all()
    assert delta < (F32_KV_LOGIT_TOL if f32_kv else F16_KV_LOGIT_TOL)


def test_greedy_decode_matches_llama_cpp(tiny_model, ids):
    tokens, lps, _ = ref.greedy_decode(tiny_model, ids, 8)
    llm = _llama_cpp(tiny_model, f32_kv=True)
    llm.reset()
    llm.eval(ids)
    theirs = []
    for _ in range(8):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        theirs.append(int(row.argmax()))
        llm.eval([theirs[-1]])
    assert tokens == theirs
    assert all(lp <= 0 for lp in lps)


def test_logprobs_are_consistent_with_logits(tiny_model, ids):
    lp = ref.logprobs(tiny_model, ids)
    z = ref.logits(tiny_model, ids)
    assert lp[0] == 0.0
    i = 37
    assert lp[i] == pytest.approx(z[i - 1, ids[i]] - np.log(np.exp(z[i - 1]).sum()), abs=1e-9)


# -- every case of policy_cases changes the outputs ----------------------------


@pytest.mark.parametrize("name", [n for n in cases.ALL if n not in cases.DECODE_ONLY])
def test_policy_changes_scores(tiny_model, ids, dense, name):
    lp = ref.logprobs(tiny_model, ids, cases.ALL[name])
    change = cases.max_abs(lp, dense)
    print(f"\n{name}: max |dlogprob| vs dense {change:.3f}, mean {np.abs(lp - dense).mean():.3f}")
    assert change > VISIBLE_CHANGE


@pytest.mark.parametrize("name", sorted(n for n in cases.ALL if "sparse" in cases.ALL[n]))
def test_quest_changes_decode_only(tiny_model, ids, dense, name):
    policy = cases.ALL[name]
    # Prefill stays dense: Score (every query is a prompt query) is exactly dense.
    if name in cases.DECODE_ONLY:
        assert cases.max_abs(ref.logprobs(tiny_model, ids, policy), dense) < IDENTITY_TOL
    # At decode, Quest reads fewer pages: the same continuation scores differently.
    tokens, _, _ = ref.greedy_decode(tiny_model, ids, cases.GENERATE_TOKENS)
    seq = ids + tokens
    only_sparse = {"sparse": policy["sparse"]}
    quest = ref.logprobs(tiny_model, seq, only_sparse, prompt_len=len(ids))
    full = ref.logprobs(tiny_model, seq, {}, prompt_len=len(ids))
    assert cases.max_abs(quest[:len(ids)], full[:len(ids)]) < IDENTITY_TOL
    change = cases.max_abs(quest, full)
    print(f"\n{name}: decode max |dlogprob| vs dense {change:.3f}")
    assert change > 0.05
    trace = ref.trace(tiny_model, seq, only_sparse, prompt_len=len(ids))
    quest_steps = [t for k, t in trace.items() if k[0] == "quest"]
    assert quest_steps, "Quest never had more pages than its budget"
    print(f"  {len(quest_steps)} (layer, KV head, query) selections; smallest score gap between the last page "
          f"taken and the first left out: {min(t['gap'] for t in quest_steps):.3f}")


@pytest.mark.parametrize("name", sorted(n for n in cases.ALL if "sparse" in cases.ALL[n]))
def test_quest_cases_are_not_at_a_tie(tiny_model, ids, name):
    """Precondition of the engine comparison at decode: along the reference's
    greedy continuation, every page selection is clear of a tie."""
    policy = cases.ALL[name]
    tokens, _, _ = ref.greedy_decode(tiny_model, ids, cases.GENERATE_TOKENS, policy)
    trace = ref.trace(tiny_model, ids + tokens, policy, prompt_len=len(ids))
    gaps = [t["gap"] for k, t in trace.items() if k[0] == "quest"]
    assert gaps, "Quest never had more pages than its budget"
    print(f"\n{name}: {len(gaps)} selections, smallest gap {min(gaps):.3f}")
    assert min(gaps) > QUEST_MIN_GAP


@pytest.mark.parametrize("name", sorted(n for n in cases.ALL if "act" in cases.ALL[n]))
def test_act_cases_are_not_at_a_threshold(tiny_model, ids, name):
    """Precondition of the engine comparison: S is non-empty somewhere and no
    token's mean attention lies within ACT_MIN_MARGIN of tau, so that the
    engine's rounding cannot flip a token in or out of S."""
    trace = ref.trace(tiny_model, ids, cases.ALL[name])
    acts = {k[1:]: t for k, t in trace.items() if k[0] == "act"}
    print(f"\n{name}: S per (layer, head): { {k: t['S'] for k, t in acts.items()} }")
    assert any(t["S"] for t in acts.values())
    assert min(t["margin"] for t in acts.values()) > ACT_MIN_MARGIN


# -- identities --------------------------------------------------------------------


def _whole(n):
    return cases.tokens((0, n))


IDENTITIES = {
    # policy, and what it must equal (None = dense)
    "zero_tuning gamma 1": ({"zero_tuning": {"gamma": 1.0}}, None),
    "temperature all 1": ({"temperature": {"factors": [1.0] * 16}}, None),
    "emphasis alpha 1": ({"emphasis": {"spans": cases.tokens((3, 9)), "alpha": 1.0}}, None),
    "emphasis span = whole prompt": ({"emphasis": {"spans": _whole(cases.SEQUENCE_TOKENS), "alpha": 0.01}}, None),
    "streaming window >= n, ORIGINAL": (
        {"streaming": {"sink_tokens": 4, "window_tokens": cases.SEQUENCE_TOKENS, "positions": "ORIGINAL"}}, None),
    "streaming window >= n, CACHE": (
        {"streaming": {"sink_tokens": 4, "window_tokens": cases.SEQUENCE_TOKENS, "positions": "CACHE"}}, None),
    "streaming sinks + window >= n, CACHE": (
        {"streaming": {"sink_tokens": 50, "window_tokens": 50, "positions": "CACHE"}}, None),
    "act beta 1": ({"act": {"beta": 1.0, "tau": 0.05, "layers": [0, 1, 2, 3]}}, None),
    "act tau above every mean": ({"act": {"beta": 0.1, "tau": 0.99, "layers": [0, 1, 2, 3]}}, None),
    "virtual_sink logit -inf": ({"virtual_sink": {"logit": -math.inf}}, None),
    "virtual_sink per-head all equal = logit": (
        {"virtual_sink": {"per_head_logits": [0.7] * 16}}, {"virtual_sink": {"logit": 0.7}}),
    "duo every head retrieval": (
        {"duo": {"retrieval_heads": [{"layer": l, "head": h} for l in range(4) for h in range(4)],
                 "sink_tokens": 2, "recent_tokens": 8}}, None),
    "duo sinks + recent cover the sequence": ({"duo": {"retrieval_heads": [], "sink_tokens": 64,
                                                       "recent_tokens": 64}}, None),
    "duo no retrieval head = streaming ORIGINAL": (
        {"duo": {"retrieval_heads": [], "sink_tokens": 4, "recent_tokens": 24}},
        {"streaming": {"sink_tokens": 4, "window_tokens": 24, "positions": "ORIGINAL"}}),
    "linear window >= n": ({"linear": {"window_tokens": cases.SEQUENCE_TOKENS, "sink_tokens": 4}}, None),
    "emphasis on all but token 0 = zero_tuning": (
        {"emphasis": {"spans": cases.tokens((1, cases.SEQUENCE_TOKENS)), "alpha": 0.3}},
        {"zero_tuning": {"gamma": 0.3}}),
    "streaming positions default = CACHE": (
        {"streaming": {"sink_tokens": 4, "window_tokens": 24}},
        {"streaming": {"sink_tokens": 4, "window_tokens": 24, "positions": "CACHE"}}),
}


@pytest.mark.parametrize("name", IDENTITIES)
def test_policy_identity(tiny_model, ids, dense, name):
    policy, other = IDENTITIES[name]
    want = dense if other is None else ref.logprobs(tiny_model, ids, other)
    assert cases.max_abs(ref.logprobs(tiny_model, ids, policy), want) < IDENTITY_TOL


def test_streaming_cache_differs_from_original_only_through_the_sinks(tiny_model, ids):
    """RoPE is relative: with CACHE positions only the query-sink distances
    change. Without sinks, CACHE and ORIGINAL are the same attention."""
    no_sink = {"sink_tokens": 0, "window_tokens": 24}
    cache = ref.logprobs(tiny_model, ids, {"streaming": {**no_sink, "positions": "CACHE"}})
    original = ref.logprobs(tiny_model, ids, {"streaming": {**no_sink, "positions": "ORIGINAL"}})
    assert cases.max_abs(cache, original) < 1e-6
    with_sinks = {"sink_tokens": 4, "window_tokens": 24}
    cache = ref.logprobs(tiny_model, ids, {"streaming": {**with_sinks, "positions": "CACHE"}})
    original = ref.logprobs(tiny_model, ids, {"streaming": {**with_sinks, "positions": "ORIGINAL"}})
    assert cases.max_abs(cache[:28], original[:28]) < 1e-6  # nothing evicted yet (query i < 4 + 24 reads all)
    assert cases.max_abs(cache, original) > 0.05


def test_sparse_with_every_page_in_budget_is_dense_at_decode(tiny_model, ids):
    tokens, _, _ = ref.greedy_decode(tiny_model, ids, 4)
    seq = ids + tokens
    full = ref.logprobs(tiny_model, seq, {}, prompt_len=len(ids))
    for sparse in ({"token_budget": 512, "dense_layers": 0}, {"token_budget": 16, "dense_layers": 4}):
        got = ref.logprobs(tiny_model, seq, {"sparse": sparse}, prompt_len=len(ids))
        assert cases.max_abs(got, full) < IDENTITY_TOL


def test_generation_policies_apply_to_prompt_and_decode(tiny_model, ids):
    """Emphasis biases prompt tokens only; ACT's S comes from the prompt: with
    prompt_len < n the generated tokens are treated differently from Score."""
    tokens, _, _ = ref.greedy_decode(tiny_model, ids, 4)
    seq = ids + tokens
    policy = {"emphasis": {"spans": cases.tokens((10, 20)), "alpha": 0.1}}
    as_generation = ref.logprobs(tiny_model, seq, policy, prompt_len=len(ids))
    as_score = ref.logprobs(tiny_model, seq, policy)
    assert cases.max_abs(as_generation[:len(ids)], as_score[:len(ids)]) < IDENTITY_TOL
    assert cases.max_abs(as_generation, as_score) > 1e-3


# -- the formulas against the papers' reference algorithms ---------------------------


def test_taylor2_is_the_based_feature_map():
    rng = np.random.default_rng(0)
    d = 16
    q, k = rng.standard_normal(d), rng.standard_normal(d)

    def phi(x):  # HazyResearch/based TaylorExp: [1, x/d^(1/4), vec(x x^T)/(sqrt(2) sqrt(d))]
        return np.concatenate([[1.0], x / d ** 0.25, np.outer(x, x).ravel() / (math.sqrt(2) * math.sqrt(d))])

    x = q @ k / math.sqrt(d)
    assert phi(q) @ phi(k) == pytest.approx(ref.taylor2(x), rel=1e-12)
    assert ref.taylor2(np.array(0.01)) == pytest.approx(math.exp(0.01), abs=1e-6)


def _act_as_in_its_reference_code(p, beta, tau):
    """GATECH-EIC/ACT atten_process_eval, re-expressed in numpy for one head:
    column sums over queries / (N - j) > tau, drop the first index, scale S by
    beta, give the removed mass to the rest in proportion (row 0 keeps 1)."""
    n = p.shape[0]
    idx = np.nonzero(p.sum(axis=0) / np.arange(n, 0, -1) > tau)[0][1:]
    out = p.copy()
    available = p[:, idx].sum(axis=1, keepdims=True) * (1 - beta)
    out[:, idx] *= beta
    rest = p.copy()
    rest[1:, idx] = 0
    out = out + available * rest / rest.sum(axis=1, keepdims=True)
    out[0, 0] = 1
    return out


def test_act_matches_its_reference_code():
    rng = np.random.default_rng(3)
    n = 40
    logits = rng.standard_normal((n, n)) * 2
    logits[:, 0] += 3  # a sink, and a few secondary ones
    logits[:, [5, 17]] += 2.5
    vis = np.tril(np.ones((n, n), dtype=bool))
    p = np.where(vis, np.exp(logits), 0)
    p /= p.sum(axis=1, keepdims=True)
    plan = type("P", (), {"prompt_len": n, "act_tau": 0.1, "act_beta": 0.4, "trace": {}})()
    ours = ref.act_reweight(p, vis, plan, (0, 0))
    assert plan.trace[("act", 0, 0)]["S"], "the toy must have a non-empty S"
    np.testing.assert_allclose(ours, _act_as_in_its_reference_code(p, 0.4, 0.1), atol=1e-12)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-12)


def test_quest_page_score_bounds_every_key_and_picks_the_hot_page():
    rng = np.random.default_rng(5)
    d, G, n = 16, 2, 100
    keys = rng.standard_normal((n, d))
    q = rng.standard_normal((G, d))
    for page in range(n // ref.PAGE_SIZE):
        block = keys[page * ref.PAGE_SIZE:(page + 1) * ref.PAGE_SIZE]
        bound = np.maximum(q * block.max(0), q * block.min(0)).sum()
        assert (block @ q.T).max(axis=0).sum() <= bound + 1e-12
    keys[37] = 10 * q.sum(axis=0)  # page 2 holds a key every query head wants
    mask = ref.quest_selected_pages(q, keys, n - 1, 2)
    pages = {j // ref.PAGE_SIZE for j in np.nonzero(mask)[0]}
    assert 2 in pages and (n - 1) // ref.PAGE_SIZE in pages and len(pages) == 3


def test_rope_is_relative():
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal((1, 1, 16)), rng.standard_normal((1, 1, 16))

    def dot(a, b):
        return float(ref.rope(q, [a], 10000.0, 16).ravel() @ ref.rope(k, [b], 10000.0, 16).ravel())

    assert dot(50, 20) == pytest.approx(dot(31, 1), rel=1e-9)
    assert dot(50, 20) != pytest.approx(dot(50, 21), rel=1e-3)


def test_streaming_cache_slots():
    plan = ref.Plan(ref.Config(4, 64, 4, 2, 16, 16, 128, 1e4, 1e-5, 512, 10), {
        "streaming": {"sink_tokens": 4, "window_tokens": 24}}, 100, 100)
    slots, own = plan.key_positions_cache(50)
    assert list(slots[:4]) == [0, 1, 2, 3]
    assert (slots[4:27] == -1).all()           # evicted: 4 .. 50-24
    assert list(slots[27:]) == list(range(4, 28))
    assert own == 27
    slots, own = plan.key_positions_cache(10)  # nothing evicted yet
    assert list(slots) == list(range(11)) and own == 10


def test_policy_dicts_are_not_mutated(tiny_model, ids):
    policy = copy.deepcopy(cases.ALL["streaming+virtual_sink+zero_tuning+emphasis"])
    before = copy.deepcopy(policy)
    ref.logprobs(tiny_model, ids[:20], policy)
    assert policy == before
