"""The engine's attention policies against the numpy reference
(policy_reference.py, the executable form of DESIGN §4), through the real
gRPC API: `attnserve serve` on the tiny random Llama of tiny_llama.py.

- Score: token_logprobs of a 100-token sequence under every policy case of
  policy_cases.py, alone and combined, with the default step size and with
  --max-num-batched-tokens 32 (chunked prefill crosses window and page
  boundaries).
- Generate: 16 greedy tokens after that prompt, with logprobs: the decode
  path of every policy (Quest acts only there).
- A mixed batch: 8 concurrent Generate calls with 8 different policies give
  the same tokens as each alone, and as the reference.

A policy the server answers UNIMPLEMENTED for is skipped with the server's
message, so these tests turn on as policies land; one that is implemented but
disagrees with the reference fails.

Tolerances are for the engine's fp16 KV cache (keys after RoPE and values
rounded to fp16, everything else fp32) against a float64 reference.
"""
import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from google.protobuf import json_format

import policy_cases as cases
import policy_reference as ref
from server_process import ServerProcess

# Measured on the CPU backend: dense 4.7e-3, the policies 3.8e-3 .. 7.1e-3 (Score)
# and 1.2e-3 .. 5.6e-3 (Generate); the tolerances are about twice that.
SCORE_TOL = 1.5e-2     # max |engine - reference| over a sequence's token_logprobs (nats)
GENERATE_TOL = 1.5e-2  # the same for Generate's per-token logprobs
TIE_TOL = 1.5e-2       # a greedy token may differ from the reference's argmax only within this of it
CHUNK_TOKENS = 32    # --max-num-batched-tokens of the chunked-prefill server
MIXED_BATCH = 8


# -- servers and calls ---------------------------------------------------------------


def _server(binary, model, tmp_path_factory, *extra):
    return ServerProcess(binary, model, tmp_path_factory.mktemp("policy_server") / "stderr.log", *extra)


@pytest.fixture(scope="module")
def server(attnserve_bin, tiny_model, tmp_path_factory):
    s = _server(attnserve_bin, tiny_model, tmp_path_factory)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def chunked_server(stubs, attnserve_bin, tiny_model, tmp_path_factory):
    s = _server(attnserve_bin, tiny_model, tmp_path_factory, "--max-num-batched-tokens", str(CHUNK_TOKENS))
    info = stubs.pb_grpc.GenerationStub(s.channel).GetServerInfo(stubs.pb.GetServerInfoRequest(), timeout=30)
    assert info.max_num_batched_tokens == CHUNK_TOKENS
    yield s
    s.stop()


@pytest.fixture(scope="module")
def ids(tiny_model):
    return list(cases.sequence(tiny_model))


def _policy(stubs, policy):
    return json_format.ParseDict(policy, stubs.attention_pb.AttentionPolicy())


class Unimplemented(Exception):
    pass


def _call(fn, *args, **kwargs):
    """Runs one RPC; UNIMPLEMENTED becomes Unimplemented(server's message)."""
    try:
        return fn(*args, **kwargs)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise Unimplemented(e.details()) from None
        raise


def _or_skip(fn, *args, **kwargs):
    try:
        return _call(fn, *args, **kwargs)
    except Unimplemented as e:
        pytest.skip(f"server: UNIMPLEMENTED: {e}")


def score(stubs, server, ids, policy):
    stub = stubs.pb_grpc.GenerationStub(server.channel)
    request = stubs.pb.ScoreRequest(token_ids=stubs.pb.TokenIds(ids=ids))
    if policy is not None:
        request.attention.CopyFrom(_policy(stubs, policy))
    response = stub.Score(request, timeout=120)
    assert list(response.token_ids) == list(ids)
    return np.array(response.token_logprobs, dtype=np.float64)


def generate_greedy(stubs, server, prompt_ids, policy, n=cases.GENERATE_TOKENS):
    """(tokens, logprobs) of n greedy tokens."""
    stub = stubs.pb_grpc.GenerationStub(server.channel)
    request = stubs.pb.GenerateRequest(
        prompt_token_ids=stubs.pb.TokenIds(ids=prompt_ids),
        sampling={"max_tokens": n, "temperature": 0.0, "ignore_eos": True, "logprobs": True})
    if policy is not None:
        request.attention.CopyFrom(_policy(stubs, policy))
    messages = list(stub.Generate(request, timeout=120))
    tokens = [t for m in messages for t in m.token_ids]
    logprobs = [lp.logprob for m in messages for lp in m.logprobs]
    assert messages[-1].finished and len(tokens) == n and len(logprobs) == n
    return tokens, np.array(logprobs, dtype=np.float64)


# -- the reference, computed once per sequence and policy ---------------------------


@functools.lru_cache(maxsize=None)
def _reference_logprobs(model, ids, name):
    policy = cases.ALL[name] if name else {}
    return ref.logprobs(model, list(ids), policy)


def check_generation(model, prompt_ids, policy, tokens, logprobs, label):
    """The engine's greedy tokens against the reference, teacher-forced along
    the engine's own tokens: each token is the reference's argmax (or within
    TIE_TOL of it: an fp16-level near-tie) and its logprob matches.
    Returns (max |dlogprob|, tokens equal to the reference's argmax)."""
    seq = list(prompt_ids) + list(tokens)
    z = ref.logits(model, seq, policy, prompt_len=len(prompt_ids))
    rows = z[len(prompt_ids) - 1:len(seq) - 1]
    lp_ref = ref.log_softmax(rows)
    want = lp_ref[np.arange(len(tokens)), tokens]
    argmax = rows.argmax(axis=1)
    for step, tok in enumerate(tokens):
        gap = rows[step].max() - rows[step, tok]
        assert gap <= TIE_TOL, (f"{label}: step {step}: engine token {tok} is {gap:.3f} below the reference's "
                                f"argmax {argmax[step]} (tokens so far {tokens[:step + 1]})")
    delta = float(np.abs(np.asarray(logprobs) - want).max())
    return delta, int((argmax == np.asarray(tokens)).sum())


# -- Score ---------------------------------------------------------------------------


def test_dense_score_matches_reference(stubs, server, tiny_model, ids):
    want = _reference_logprobs(tiny_model, tuple(ids), None)
    for policy in (None, {}, {"full": {}, "dense": {}}):
        got = score(stubs, server, ids, policy)
        delta = cases.max_abs(got, want)
        print(f"\ndense ({policy}): max |dlogprob| {delta:.2e}, mean {np.abs(got - want).mean():.2e}")
        assert delta < SCORE_TOL


def _check_score(stubs, srv, tiny_model, ids, name, label):
    got = _or_skip(score, stubs, srv, ids, cases.ALL[name])
    want = _reference_logprobs(tiny_model, tuple(ids), name)
    dense = _reference_logprobs(tiny_model, tuple(ids), None)
    delta = cases.max_abs(got, want)
    worst = int(np.abs(got - want).argmax())
    print(f"\n{label} {name}: max |dlogprob| {delta:.2e} (token {worst}), mean {np.abs(got - want).mean():.2e}; "
          f"the policy moves the reference by {cases.max_abs(want, dense):.2f}")
    assert delta < SCORE_TOL, (f"{name}: engine vs reference max |dlogprob| {delta:.4f} at token {worst} "
                               f"(engine {got[worst]:.4f}, reference {want[worst]:.4f}, dense {dense[worst]:.4f})")


@pytest.mark.parametrize("name", list(cases.ALL))
def test_score_matches_reference(stubs, server, tiny_model, ids, name):
    _check_score(stubs, server, tiny_model, ids, name, "score")


@pytest.mark.parametrize("name", list(cases.ALL))
def test_score_with_chunked_prefill_matches_reference(stubs, chunked_server, tiny_model, ids, name):
    """Prefill in 32-token steps: windows and pages straddle chunk boundaries;
    ACT's S still comes from the whole prompt (DESIGN §4)."""
    _check_score(stubs, chunked_server, tiny_model, ids, name, f"score (chunks of {CHUNK_TOKENS})")


SCORED_PROMPT = 64  # ScoreRequest.prompt_tokens: the rest is scored as generated


@pytest.mark.parametrize("name", ["sparse", "sparse_default_dense_layers", "act_default",
                                  "sparse+zero_tuning+emphasis+virtual_sink"])
def test_score_with_a_prompt_scores_the_rest_as_decode(stubs, server, tiny_model, ids, name):
    """Score's prompt_tokens: Quest reads its pages for the tokens after the
    prompt, ACT finds S from the prompt alone, as the reference's prompt_len."""
    stub = stubs.pb_grpc.GenerationStub(server.channel)
    request = stubs.pb.ScoreRequest(token_ids=stubs.pb.TokenIds(ids=ids), prompt_tokens=SCORED_PROMPT)
    request.attention.CopyFrom(_policy(stubs, cases.ALL[name]))
    got = np.array(stub.Score(request, timeout=120).token_logprobs, dtype=np.float64)
    want = ref.logprobs(tiny_model, list(ids), cases.ALL[name], prompt_len=SCORED_PROMPT)
    whole = _reference_logprobs(tiny_model, tuple(ids), name)
    delta = cases.max_abs(got, want)
    print(f"\nscore {name} with a {SCORED_PROMPT}-token prompt: max |dlogprob| {delta:.2e}; the prompt length "
          f"moves the reference by {cases.max_abs(want, whole):.2f}")
    assert delta < SCORE_TOL


def test_score_prompt_tokens_out_of_range_is_rejected(stubs, server, ids):
    stub = stubs.pb_grpc.GenerationStub(server.channel)
    for bad in (0, len(ids) + 1):
        with pytest.raises(grpc.RpcError) as e:
            stub.Score(stubs.pb.ScoreRequest(token_ids=stubs.pb.TokenIds(ids=ids), prompt_tokens=bad), timeout=60)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details() == f"prompt_tokens: must be in [1, {len(ids)}] (got {bad})"


# -- Generate ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(cases.ALL))
def test_generate_matches_reference(stubs, server, tiny_model, ids, name):
    policy = cases.ALL[name]
    tokens, logprobs = _or_skip(generate_greedy, stubs, server, ids, policy)
    delta, agree = check_generation(tiny_model, ids, policy, tokens, logprobs, name)
    print(f"\ngenerate {name}: {agree}/{len(tokens)} tokens are the reference's argmax; "
          f"max |dlogprob| {delta:.2e}")
    assert delta < GENERATE_TOL


@pytest.mark.parametrize("name", list(cases.ALL))
def test_generate_with_chunked_prefill_matches_reference(stubs, chunked_server, tiny_model, ids, name):
    policy = cases.ALL[name]
    tokens, logprobs = _or_skip(generate_greedy, stubs, chunked_server, ids, policy)
    delta, agree = check_generation(tiny_model, ids, policy, tokens, logprobs, name)
    print(f"\ngenerate (chunks of {CHUNK_TOKENS}) {name}: {agree}/{len(tokens)} tokens are the reference's argmax; "
          f"max |dlogprob| {delta:.2e}")
    assert delta < GENERATE_TOL


def test_emphasis_char_spans_cover_overlapping_tokens(stubs, server, tiny_model):
    """Span unit CHARS on a text prompt: the span covers every token that
    overlaps the byte range; the result equals the reference with those
    token indices."""
    text = cases.TEXT.read_text()[:400]
    stub = stubs.pb_grpc.GenerationStub(server.channel)
    tok = stub.Tokenize(stubs.pb.TokenizeRequest(text=text, add_special=True), timeout=30)
    offsets = list(zip(tok.offsets[::2], tok.offsets[1::2]))
    char_spans = [(105, 162), (250, 251)]  # each begins and ends inside a token
    token_spans = []
    for begin, end in char_spans:
        covered = [i for i, (b, e) in enumerate(offsets) if b < end and e > begin and e > b]
        token_spans.append((covered[0], covered[-1] + 1))
    request = stubs.pb.ScoreRequest(text=text)
    request.attention.CopyFrom(_policy(stubs, {"emphasis": {
        "spans": [{"begin": b, "end": e, "unit": "CHARS"} for b, e in char_spans], "alpha": 0.05}}))
    response = _or_skip(stub.Score, request, timeout=60)
    ids = list(response.token_ids)
    assert ids == list(tok.token_ids)
    want = ref.logprobs(tiny_model, ids, {"emphasis": {"spans": cases.tokens(*token_spans), "alpha": 0.05}})
    delta = cases.max_abs(response.token_logprobs, want)
    print(f"\nchars {char_spans} -> tokens {token_spans}: max |dlogprob| {delta:.2e}")
    assert delta < SCORE_TOL


def test_streaming_cache_generates_past_the_context(stubs, server, tiny_model, ids):
    """positions=CACHE keeps RoPE positions below sink + window, so generation
    may run past the model's context (512 for the tiny model) and still
    follow the reference, teacher-forced along the engine's tokens."""
    policy = {"streaming": {"sink_tokens": 4, "window_tokens": 60, "positions": "CACHE"}}
    context = ref.load(str(tiny_model)).config.context
    n = context + 40 - len(ids)
    tokens, logprobs = _or_skip(generate_greedy, stubs, server, ids, policy, n=n)
    delta, agree = check_generation(tiny_model, ids, policy, tokens, logprobs, "streaming CACHE past the context")
    print(f"\n{len(ids)} + {n} tokens (context {context}): {agree}/{n} tokens are the reference's argmax; "
          f"max |dlogprob| {delta:.2e}")
    assert delta < GENERATE_TOL


def test_prefix_cache_keeps_policies_apart(stubs, server, tiny_model, ids):
    """The same prompt under dense, a policy that changes prefill, and dense
    again: no request may be served another policy's KV (DESIGN §4: prefix-
    cache keys include every field that changes prefill outputs)."""
    prompt = ids[:80]
    runs = [(None, {}), ("zero_tuning", cases.ALL["zero_tuning"]), ("emphasis", cases.ALL["emphasis"]),
            (None, {}), ("zero_tuning", cases.ALL["zero_tuning"])]
    for label, policy in runs:
        tokens, logprobs = _or_skip(generate_greedy, stubs, server, prompt, policy or None, n=4)
        delta, _ = check_generation(tiny_model, prompt, policy, tokens, logprobs, label or "dense")
        assert delta < GENERATE_TOL, f"{label or 'dense'} after other policies on the same prompt: {delta:.4f}"


# -- a batch of different policies ---------------------------------------------------

# In order of preference; the first MIXED_BATCH the server implements run together.
MIXED_CANDIDATES = [None, "streaming_original", "virtual_sink_per_head", "zero_tuning", "temperature", "emphasis",
                    "act_heads", "duo", "sparse", "linear", "streaming_cache",
                    "streaming+virtual_sink+zero_tuning+emphasis", "temperature+zero_tuning+emphasis",
                    "streaming+temperature", "zero_tuning_heads", "emphasis_heads", "virtual_sink",
                    "streaming_original_no_sink"]


def test_mixed_policy_batch(stubs, server, tiny_model, ids):
    alone, skipped = {}, []
    for name in MIXED_CANDIDATES:
        if len(alone) == MIXED_BATCH:
            break
        try:
            alone[name] = _call(generate_greedy, stubs, server, ids, cases.ALL[name] if name else None)[0]
        except Unimplemented as e:
            skipped.append(f"{name}: {e}")
    if len(alone) < 2:
        pytest.skip("fewer than 2 policies implemented: " + "; ".join(skipped))
    names = list(alone)
    print(f"\nmixed batch of {len(names)}: {['dense' if n is None else n for n in names]}")

    barrier = threading.Barrier(len(names))

    def one(name):
        barrier.wait()
        return generate_greedy(stubs, server, ids, cases.ALL[name] if name else None)

    with ThreadPoolExecutor(len(names)) as pool:
        together = dict(zip(names, pool.map(one, names)))
    for name in names:
        tokens, logprobs = together[name]
        label = "dense" if name is None else name
        assert tokens == alone[name], f"{label}: batched {tokens} != alone {alone[name]}"
        delta, agree = check_generation(tiny_model, ids, cases.ALL[name] if name else {}, tokens, logprobs, label)
        print(f"  {label}: {agree}/{len(tokens)} tokens are the reference's argmax, max |dlogprob| {delta:.2e}")
        assert delta < GENERATE_TOL
    assert len({tuple(t) for t, _ in together.values()}) > 1, "every policy gave the same tokens"
    if len(names) < MIXED_BATCH:
        pytest.skip(f"ran {len(names)} policies, {MIXED_BATCH} wanted; unimplemented: " + "; ".join(skipped))
