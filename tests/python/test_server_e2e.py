"""End-to-end tests of `attnserve serve` through a real gRPC client: the
built binary on the default model, ephemeral ports on 127.0.0.1."""
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from conftest import BACKEND, THREADS, run_attnserve_json
from server_process import ServerProcess, generate, wait_for_metric


@pytest.fixture(scope="module")
def server(attnserve_bin, model_path, tmp_path_factory):
    s = ServerProcess(attnserve_bin, model_path, tmp_path_factory.mktemp("server") / "stderr.log")
    yield s
    s.stop()


def test_greedy_generate_equals_cli(stubs, server, attnserve_bin, model_path):
    prompt = "The three primary colors are"
    cli = run_attnserve_json(attnserve_bin, "generate", "--model", model_path, "--prompt", prompt,
                             "--max-tokens", 12, "--ignore-eos", "--threads", THREADS)
    messages = generate(stubs, server, prompt=prompt, sampling={"max_tokens": 12, "ignore_eos": True})
    ids = [t for m in messages for t in m.token_ids]
    assert ids == cli["token_ids"]
    assert "".join(m.text for m in messages) == cli["text"]
    final = messages[-1]
    assert final.finished and final.finish_reason == stubs.pb.LENGTH
    assert final.usage.prompt_tokens == len(cli["prompt_token_ids"])
    assert final.usage.completion_tokens == 12
    assert all(not m.finished for m in messages[:-1])


def test_health_is_serving(stubs, server):
    health = stubs.health_grpc.HealthStub(server.channel)
    response = health.Check(stubs.health_pb.HealthCheckRequest(service=""), timeout=10)
    assert response.status == stubs.health_pb.HealthCheckResponse.SERVING


def test_reflection_lists_and_describes_the_service(stubs, server):
    reflection = stubs.reflection_grpc.ServerReflectionStub(server.channel)
    requests = [stubs.reflection_pb.ServerReflectionRequest(list_services=""),
                stubs.reflection_pb.ServerReflectionRequest(file_containing_symbol="attnserve.v1.Generation")]
    listed, described = list(reflection.ServerReflectionInfo(iter(requests), timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {"attnserve.v1.Generation", "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto  # what grpcurl describe needs


def test_invalid_request_is_rejected_and_counted(stubs, server):
    with pytest.raises(grpc.RpcError) as e:
        generate(stubs, server, prompt="hi", sampling={"temperature": -1.0})
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sampling.temperature" in e.value.details()
    # The server counts a call when gRPC reports it done, which may be just
    # after the client has seen the status.
    deadline = time.monotonic() + 10
    while (server.metric("attnserve_request_errors_total", 'code="INVALID_ARGUMENT"') or 0) < 1:
        assert time.monotonic() < deadline, "request_errors_total{code=INVALID_ARGUMENT} never counted the call"
        time.sleep(0.05)


def test_unbuilt_combination_is_unimplemented(stubs, server):
    with pytest.raises(grpc.RpcError) as e:
        generate(stubs, server, prompt="hi", attention={"linear": {"window_tokens": 64}, "zero_tuning": {"gamma": 2}})
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert e.value.details() == "attention.linear: not implemented with attention.zero_tuning unless sink_tokens >= 1"


def test_quest_budget_below_a_page_is_rejected(stubs, server):
    with pytest.raises(grpc.RpcError) as e:
        generate(stubs, server, prompt="hi", attention={"sparse": {"token_budget": 8}})
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "attention.sparse.token_budget: must be >= the KV page size 16 (got 8)"


def test_default_attention_flag(stubs, attnserve_bin, model_path, tmp_path):
    policy = '{"streaming": {"window_tokens": 64, "positions": "ORIGINAL"}}'
    s = ServerProcess(attnserve_bin, model_path, tmp_path / "stderr.log", "--default-attention", policy)
    try:
        stub = stubs.pb_grpc.GenerationStub(s.channel)
        info = stub.GetServerInfo(stubs.pb.GetServerInfoRequest(), timeout=30)
        assert info.default_attention_json == '{"streaming":{"window_tokens":64,"positions":"ORIGINAL"}}'
        messages = generate(stubs, s, prompt="hi", sampling={"max_tokens": 3, "ignore_eos": True})
        assert messages[-1].finished
        assert s.metric("attnserve_requests_total", 'sink="streaming"') == 1
    finally:
        s.stop()
    # Invalid JSON, and a valid JSON policy with a bad value, stop the server at start naming the field.
    for bad, field in [('{"streaming": {"windw_tokens": 8}}', "windw_tokens"),
                       ('{"zero_tuning": {"gamma": -1}}', "attention.zero_tuning.gamma: must be > 0 (got -1)")]:
        proc = subprocess.run([str(attnserve_bin), "serve", "--model", str(model_path), "--port", "0",
                               "--metrics-port", "-1", "--default-attention", bad],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1
        assert "--default-attention: " in proc.stderr and field in proc.stderr, proc.stderr


def test_dummy_load_format_serves_random_weights(stubs, attnserve_bin, model_path, tmp_path):
    s = ServerProcess(attnserve_bin, model_path, tmp_path / "stderr.log", "--load-format", "dummy")
    try:
        info = stubs.pb_grpc.GenerationStub(s.channel).GetModelInfo(stubs.pb.GetModelInfoRequest(), timeout=10)
        assert info.name.endswith("(random weights)"), info.name
        messages = generate(stubs, s, prompt="The three primary colors are",
                            sampling={"max_tokens": 8, "ignore_eos": True})
        assert sum(len(m.token_ids) for m in messages) == 8
        assert messages[-1].finish_reason == stubs.pb.LENGTH
    finally:
        s.stop()


def test_load_format_flags_fail_at_start_with_the_reason(attnserve_bin, model_path):
    for flags, reason in [(["--load-format", "dumy"], '--load-format: "dumy" is none of auto, dummy'),
                          (["--dummy-shape", "llama-3-8b"], "--dummy-shape: needs --load-format dummy"),
                          (["--load-format", "dummy", "--dummy-shape", "gpt-2"], '--dummy-shape: "gpt-2" is none of llama-3-8b')]:
        proc = subprocess.run([str(attnserve_bin), "serve", "--model", str(model_path), "--port", "0",
                               "--metrics-port", "-1", *flags], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, proc.stderr
        assert reason in proc.stderr, proc.stderr


def test_32_concurrent_streams(stubs, server):
    stub = stubs.pb_grpc.GenerationStub(server.channel)

    def one(i):
        request = stubs.pb.GenerateRequest(prompt=f"Count from {i} to {i + 5}:",
                                           sampling={"max_tokens": 6, "ignore_eos": True})
        messages = list(stub.Generate(request, timeout=300))
        prompt_ids = stub.Tokenize(stubs.pb.TokenizeRequest(text=request.prompt, add_special=True,
                                                            parse_special=True), timeout=30).token_ids
        return messages, len(prompt_ids)

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(32)))
    for messages, prompt_tokens in results:
        final = messages[-1]
        assert final.finished and final.finish_reason == stubs.pb.LENGTH
        assert final.usage.completion_tokens == sum(len(m.token_ids) for m in messages) == 6
        assert final.usage.prompt_tokens == prompt_tokens
    # Exported on every backend; the CPU's steps never come from CUDA graphs.
    expected = 0.0 if BACKEND == "cpu" else None
    for how in ("replayed", "captured"):
        value = server.metric("attnserve_cuda_graph_steps_total", f'how="{how}"')
        assert value is not None and (expected is None or value == expected), (how, value)
    padding = server.metric("attnserve_decode_padding_rows_total")
    assert padding is not None and (expected is None or padding == expected), padding


def test_cancel_and_deadline_free_the_kv_cache(stubs, server):
    stub = stubs.pb_grpc.GenerationStub(server.channel)
    long_request = stubs.pb.GenerateRequest(prompt="Tell me a long story.",
                                            sampling={"max_tokens": 4000, "ignore_eos": True})
    call = stub.Generate(long_request, timeout=300)
    next(call)
    next(call)
    assert server.metric("attnserve_kv_cache_usage_ratio") > 0
    call.cancel()
    with pytest.raises(grpc.RpcError) as e:
        list(call)
    assert e.value.code() == grpc.StatusCode.CANCELLED
    assert wait_for_metric(server, "attnserve_kv_cache_usage_ratio", 0.0) == 0.0

    with pytest.raises(grpc.RpcError) as e:
        list(stub.Generate(long_request, timeout=1.0))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_for_metric(server, "attnserve_kv_cache_usage_ratio", 0.0) == 0.0
    assert wait_for_metric(server, "attnserve_num_requests_running", 0.0) == 0.0


def test_sigterm_drains_and_exits_0(stubs, attnserve_bin, model_path, tmp_path):
    s = ServerProcess(attnserve_bin, model_path, tmp_path / "stderr.log", "--drain-timeout", "60s")
    stub = stubs.pb_grpc.GenerationStub(s.channel)
    running = stub.Generate(stubs.pb.GenerateRequest(prompt="Once upon a time",
                                                     sampling={"max_tokens": 48, "ignore_eos": True}), timeout=300)
    first = next(running)
    s.proc.send_signal(signal.SIGTERM)
    # Draining: health says NOT_SERVING and new requests are refused...
    health = stubs.health_grpc.HealthStub(s.channel)
    deadline = time.monotonic() + 10
    while health.Check(stubs.health_pb.HealthCheckRequest(), timeout=10).status != \
            stubs.health_pb.HealthCheckResponse.NOT_SERVING:
        assert time.monotonic() < deadline, "health never turned NOT_SERVING"
        time.sleep(0.05)
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Generate(stubs.pb.GenerateRequest(prompt="hi"), timeout=30))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    # ... while the running stream completes.
    rest = list(running)
    assert rest[-1].finished and rest[-1].finish_reason == stubs.pb.LENGTH
    assert len(first.token_ids) + sum(len(m.token_ids) for m in rest) == 48
    assert s.proc.wait(timeout=60) == 0
    s.stop()
    log = (tmp_path / "stderr.log").read_text()
    assert "drained" in log and 'method=Generate' in log


def test_prefix_cache_hit_in_usage_and_metrics(stubs, server):
    prompt = ("<|im_start|>system\nYou are a careful assistant who answers in one short sentence.<|im_end|>\n"
              "<|im_start|>user\nWhich river flows through Paris?<|im_end|>\n<|im_start|>assistant\n")
    hits_before = server.metric("attnserve_prefix_cache_hits_total") or 0.0
    first = generate(stubs, server, prompt=prompt, sampling={"max_tokens": 4, "ignore_eos": True})[-1]
    second = generate(stubs, server, prompt=prompt, sampling={"max_tokens": 4, "ignore_eos": True})[-1]
    assert first.usage.cached_prompt_tokens == 0
    assert second.usage.cached_prompt_tokens > 0
    assert second.usage.cached_prompt_tokens % 16 == 0  # whole pages
    hits = server.metric("attnserve_prefix_cache_hits_total") - hits_before
    assert hits >= second.usage.cached_prompt_tokens
