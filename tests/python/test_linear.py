"""The linear attention mode over a long generation, end to end: `attnserve
serve` on the tiny random Llama of tiny_llama.py with its context raised to
24576 generates 20,000 tokens with a 64-token window; the KV pages in use
(attnserve_kv_cache_usage_ratio) stay those of sinks + window and the
folded-key state (attnserve_linear_state_bytes) keeps one size, sampled from
/metrics while it runs."""
import threading
import time

import pytest
from google.protobuf import json_format

import tiny_llama
from server_process import tiny_model_server

LINEAR = {"linear": {"window_tokens": 64, "sink_tokens": 4}}
TOKENS = 20000
CONTEXT = 24576


@pytest.fixture(scope="module")
def server(attnserve_bin, tmp_path_factory):
    s = tiny_model_server(attnserve_bin, tmp_path_factory, CONTEXT, "linear_server")
    yield s
    s.stop()


def test_linear_state_and_kv_stay_flat_over_20000_tokens(stubs, server):
    stub = stubs.pb_grpc.GenerationStub(server.channel)
    info = stub.GetModelInfo(stubs.pb.GetModelInfoRequest(), timeout=30)
    assert info.context_length == CONTEXT
    request = stubs.pb.GenerateRequest(prompt="Once upon a time",
                                       sampling={"max_tokens": TOKENS, "ignore_eos": True, "temperature": 0.0})
    request.attention.CopyFrom(json_format.ParseDict(LINEAR, stubs.attention_pb.AttentionPolicy()))
    samples, done = [], threading.Event()

    def sample():
        while not done.is_set():
            samples.append((server.metric("attnserve_kv_cache_usage_ratio") or 0.0,
                            server.metric("attnserve_linear_state_bytes") or 0.0))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        generated = sum(len(m.token_ids) for m in stub.Generate(request, timeout=600))
    finally:
        done.set()
        sampler.join()
    assert generated == TOKENS
    pages = [round(ratio * info.kv_pages) for ratio, _ in samples]
    states = {b for _, b in samples if b > 0}
    # Per layer and KV head: (1 + 16 + 16 * 17 / 2) features x (16 + 1) floats.
    assert states == {tiny_llama.N_LAYERS * tiny_llama.N_KV_HEADS * 153 * 17 * 4}
    # 4 sinks (1 page) and the 64-token window over up to 5 pages, the page being written.
    assert 0 < max(pages) <= 7, f"KV pages in use reached {max(pages)}"
    print(f"\n{TOKENS} tokens, {len(samples)} samples: KV pages <= {max(pages)}, state {states} bytes")
