"""Head profiles end to end: `attnserve profile` on the tiny random Llama
against the statistics computed independently in numpy from the reference
forward (policy_reference.py), and `serve --profile-dir` with the committed
profile of the default model: policies name it, unknown names are rejected
by field, and a bad file stops the server from starting."""
import json
import math
import shutil
import subprocess

import grpc
import numpy as np
import pytest

import policy_reference as ref
from conftest import LICENSE_TEXTS, ROOT, run_attnserve, run_attnserve_json
from server_process import ServerProcess, generate

TOKENS = 80
SINK, RECENT = 4, 16
COMMITTED_PROFILE = ROOT / "profiles" / "smollm2-135m.json"


def reference_stats(model_path, ids, sink, recent):
    """[layers, heads, 3]: sink mass, mean distance and retrieval score of
    every head, from the reference forward's queries and its keys and values
    rounded to fp16 as the engine caches them."""
    m = ref.load(str(model_path))
    cfg = m.config
    n, H, KV, d = len(ids), cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    pos = np.arange(n)
    i, j = pos[:, None], pos[None, :]
    causal = j <= i
    kept = causal & ((j < sink) | (j > i - recent))
    hides_keys = pos >= sink + recent
    out = np.zeros((cfg.n_layers, H, 3))
    x = m.w("token_embd.weight")[np.asarray(ids)].astype(np.float64)
    for layer in range(cfg.n_layers):
        b = f"blk.{layer}."
        h = ref.rms_norm(x, m.w(b + "attn_norm.weight"), cfg.rms_eps)
        q = (h @ m.w(b + "attn_q.weight").T).reshape(n, H, d)
        k = (h @ m.w(b + "attn_k.weight").T).reshape(n, KV, d)
        v = (h @ m.w(b + "attn_v.weight").T).reshape(n, KV, d)
        qr = ref.rope(q, pos, cfg.rope_base, cfg.rope_dim)
        kr = ref.rope(k, pos, cfg.rope_base, cfg.rope_dim).astype(np.float16).astype(np.float64)
        vr = v.astype(np.float16).astype(np.float64)
        for head in range(H):
            g = head // (H // KV)
            s = np.where(causal, qr[:, head] @ kr[:, g].T / math.sqrt(d), -np.inf)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            full = p @ vr[:, g]
            pr = np.where(kept, p, 0.0)
            restricted = (pr / pr.sum(axis=1, keepdims=True)) @ vr[:, g]
            score = np.linalg.norm(full - restricted, axis=1) / np.linalg.norm(full, axis=1)
            out[layer, head] = [p[:, 0].mean(), (p * np.where(causal, i - j, 0)).sum(axis=1).mean(),
                                score[hides_keys].mean()]
        o = ref.attention(ref.Plan(cfg, {}, n, n), layer, q, k, v, cfg, kv_fp16=True).reshape(n, H * d)
        x = x + o @ m.w(b + "attn_output.weight").T
        h = ref.rms_norm(x, m.w(b + "ffn_norm.weight"), cfg.rms_eps)
        up = h @ m.w(b + "ffn_up.weight").T
        x = x + (ref.silu(h @ m.w(b + "ffn_gate.weight").T) * up) @ m.w(b + "ffn_down.weight").T
    return out


@pytest.fixture(scope="module")
def tiny_profile(attnserve_bin, tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("profile") / "tiny.json"
    run_attnserve(attnserve_bin, "profile", "--model", tiny_model, "--text-file", LICENSE_TEXTS[0],
                  "--max-tokens", TOKENS, "--sink-tokens", SINK, "--recent-tokens", RECENT, "--out", path)
    return json.loads(path.read_text())


def test_profile_matches_numpy(attnserve_bin, tiny_model, tiny_profile):
    ids = run_attnserve_json(attnserve_bin, "score", "--model", tiny_model, "--text-file", LICENSE_TEXTS[0],
                             "--max-text-tokens", TOKENS)["token_ids"]
    want = reference_stats(tiny_model, ids, SINK, RECENT)
    cfg = ref.load(str(tiny_model)).config
    assert tiny_profile["calibration"] == {"text": LICENSE_TEXTS[0].name, "tokens": TOKENS, "sink_tokens": SINK,
                                           "recent_tokens": RECENT, "retrieval_fraction": 0.25}
    heads = tiny_profile["heads"]
    assert [(h["layer"], h["head"]) for h in heads] == [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    got = np.array([[h["sink_mass"], h["mean_distance"], h["retrieval_score"]] for h in heads])
    got = got.reshape(cfg.n_layers, cfg.n_heads, 3)
    # Heads must differ for the comparison to mean anything.
    assert want[..., 0].max() > 2 * want[..., 0].min() and want[..., 2].max() > 5 * want[..., 2].min()
    # Measured: 9.2e-4 relative at most (the engine's fp32 forward against float64); one key more or
    # less in the restricted view moves the retrieval scores by ~17%.
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-5)


def test_retrieval_heads_are_the_top_quarter(tiny_profile):
    heads = tiny_profile["heads"]
    scores = sorted((-h["retrieval_score"], h["layer"], h["head"]) for h in heads)
    top = sorted((layer, head) for _, layer, head in scores[:round(0.25 * len(heads))])
    assert [(r["layer"], r["head"]) for r in tiny_profile["retrieval_heads"]] == top


def test_profile_needs_tokens_past_the_restricted_view(attnserve_bin, tiny_model, tmp_path):
    proc = subprocess.run([str(attnserve_bin), "profile", "--model", str(tiny_model), "--text-file",
                           str(LICENSE_TEXTS[0]), "--max-tokens", "20", "--out", str(tmp_path / "p.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "the text gives 20 tokens; the retrieval score needs more than --sink_tokens + --recent_tokens = 320" \
        in proc.stderr
    assert not (tmp_path / "p.json").exists()


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("profiles")
    shutil.copy(COMMITTED_PROFILE, d / "smol.json")
    return d


@pytest.fixture(scope="module")
def server(attnserve_bin, model_path, profile_dir, tmp_path_factory):
    s = ServerProcess(attnserve_bin, model_path, tmp_path_factory.mktemp("profile_server") / "stderr.log",
                      "--profile-dir", profile_dir)
    yield s
    s.stop()


def test_server_lists_and_accepts_the_profile(stubs, server):
    info = stubs.pb_grpc.GenerationStub(server.channel).GetModelInfo(stubs.pb.GetModelInfoRequest(), timeout=30)
    assert list(info.profiles) == ["smol"]
    assert {p.name: p.implemented for p in info.policies}["profile"]
    request = dict(prompt="The licenses for most software", sampling={"max_tokens": 4, "ignore_eos": True})
    named = generate(stubs, server, attention={"profile": "smol"}, **request)
    assert named[-1].finished
    # A profile changes nothing by itself: the tokens are dense attention's.
    dense = generate(stubs, server, **request)
    assert [m.token_ids for m in named] == [m.token_ids for m in dense]


def test_server_rejects_an_unknown_profile_by_field(stubs, server):
    with pytest.raises(grpc.RpcError) as e:
        generate(stubs, server, prompt="Hello", attention={"profile": "smoll"})
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == 'attention.profile: unknown profile "smoll" (loaded: smol)'


def test_a_bad_profile_stops_the_server_from_starting(attnserve_bin, model_path, profile_dir, tmp_path):
    bad = tmp_path / "profiles"
    shutil.copytree(profile_dir, bad)
    profile = json.loads((bad / "smol.json").read_text())
    profile["heads"][7]["sink_mass"] = 2.0
    (bad / "broken.json").write_text(json.dumps(profile))
    proc = subprocess.run([str(attnserve_bin), "serve", "--model", str(model_path), "--port", "0",
                           "--metrics-port", "-1", "--profile-dir", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f"--profile-dir: {bad / 'broken.json'}: heads[7].sink_mass: must be in [0, 1] (got 2.0)" in proc.stderr
