"""Streaming positions=CACHE end to end: `attnserve serve` on the tiny random
Llama of tiny_llama.py generates far past its context with the KV cache
flat (20,000 tokens with a 512-token window at context 8192, sampled from
/metrics), while positions=ORIGINAL and dense still stop at the context."""
import threading
import time

import grpc
import pytest

from server_process import ServerProcess, tiny_model_server

CACHE = {"streaming": {"sink_tokens": 4, "window_tokens": 512, "positions": "CACHE"}}
SHORT_CACHE = {"streaming": {"sink_tokens": 4, "window_tokens": 64, "positions": "CACHE"}}  # for context 512
TOKENS = 20000
LONG_CONTEXT = 8192


@pytest.fixture(scope="module")
def server(attnserve_bin, tiny_model, tmp_path_factory):
    s = ServerProcess(attnserve_bin, tiny_model, tmp_path_factory.mktemp("streaming_server") / "stderr.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def long_server(attnserve_bin, tmp_path_factory):
    s = tiny_model_server(attnserve_bin, tmp_path_factory, LONG_CONTEXT, "streaming_long")
    yield s
    s.stop()


def _request(stubs, max_tokens, policy=None):
    from google.protobuf import json_format

    request = stubs.pb.GenerateRequest(prompt="Once upon a time",
                                       sampling={"max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.0})
    if policy is not None:
        request.attention.CopyFrom(json_format.ParseDict(policy, stubs.attention_pb.AttentionPolicy()))
    return request


def test_streaming_cache_generates_past_the_context_with_flat_kv(stubs, long_server):
    server = long_server
    stub = stubs.pb_grpc.GenerationStub(server.channel)
    info = stub.GetModelInfo(stubs.pb.GetModelInfoRequest(), timeout=30)
    assert info.context_length == LONG_CONTEXT
    samples, done = [], threading.Event()

    def sample():
        while not done.is_set():
            samples.append(server.metric("attnserve_kv_cache_usage_ratio"))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        messages = list(stub.Generate(_request(stubs, TOKENS, CACHE), timeout=900))
    finally:
        done.set()
        sampler.join()
    final = messages[-1]
    assert final.finished and final.finish_reason == stubs.pb.LENGTH
    assert final.usage.completion_tokens == sum(len(m.token_ids) for m in messages) == TOKENS
    assert final.usage.prompt_tokens + TOKENS > 2 * info.context_length
    # Flat: the sink page, the window's 512 tokens over 33 pages and the page
    # being written, however far past the context (a dense sequence of this
    # length would hold 1251 pages).
    held = [round(r * info.kv_pages) for r in samples if r is not None]
    print(f"\n{TOKENS} tokens, {len(held)} samples of attnserve_kv_cache_usage_ratio: pages held "
          f"{min(held)} .. {max(held)} of {info.kv_pages}")
    assert len(held) >= 10 and max(held) > 0
    assert max(held) <= 35
    late = held[len(held) // 2:]
    assert max(late) <= 35 and max(late) > 0
    assert server.metric("attnserve_kv_cache_usage_ratio") == 0.0


def test_original_positions_and_dense_stop_at_the_context(stubs, server):
    stub = stubs.pb_grpc.GenerationStub(server.channel)
    for policy in (None, {"streaming": {"sink_tokens": 4, "window_tokens": 64, "positions": "ORIGINAL"}}):
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Generate(_request(stubs, 600, policy), timeout=60))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "sampling.max_tokens" in e.value.details()
        # Up to the context they run and end with LENGTH there.
        prompt = len(stub.Tokenize(stubs.pb.TokenizeRequest(text="Once upon a time", add_special=True),
                                   timeout=30).token_ids)
        messages = list(stub.Generate(_request(stubs, 512 - prompt, policy), timeout=120))
        assert messages[-1].finish_reason == stubs.pb.LENGTH
        assert messages[-1].usage.completion_tokens == 512 - prompt


def test_streaming_cache_scores_past_the_context(stubs, server):
    stub = stubs.pb_grpc.GenerationStub(server.channel)
    from google.protobuf import json_format

    text = open("/usr/share/common-licenses/Apache-2.0").read()
    request = stubs.pb.ScoreRequest(text=text)
    request.attention.CopyFrom(json_format.ParseDict(SHORT_CACHE, stubs.attention_pb.AttentionPolicy()))
    response = stub.Score(request, timeout=300)
    assert len(response.token_ids) > 512 and response.perplexity > 1.0
    with pytest.raises(grpc.RpcError) as e:
        stub.Score(stubs.pb.ScoreRequest(text=text), timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
