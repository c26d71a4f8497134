"""A real Prometheus server (Debian's `prometheus`) scrapes `attnserve serve`
and the test reads TTFT and token counts back through Prometheus' HTTP API."""
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from server_process import ServerProcess, generate

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
N_REQUESTS = 4
MAX_TOKENS = 8


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(port, expr):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return [float(sample["value"][1]) for sample in body["data"]["result"]]


def wait_for(port, expr, want, timeout_s=60):
    """Polls until Prometheus has scraped a value equal to `want`."""
    deadline = time.monotonic() + timeout_s
    values = []
    while time.monotonic() < deadline:
        try:
            values = query(port, expr)
        except OSError:  # Prometheus still starting
            values = []
        if values and values[0] == want:
            return values[0]
        time.sleep(0.5)
    return values[0] if values else None


@pytest.fixture(scope="module")
def prometheus_and_server(attnserve_bin, model_path, tmp_path_factory):
    if not shutil.which(PROMETHEUS):
        pytest.fail(f"{PROMETHEUS} is missing: run scripts/setup.sh (Debian package prometheus)")
    tmp = tmp_path_factory.mktemp("prometheus")
    server = ServerProcess(attnserve_bin, model_path, tmp / "server.log")
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: attnserve\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{server.metrics_port}']\n")
    port = free_port()
    log = open(tmp / "prometheus.log", "w")
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    yield server, port
    prom.terminate()
    prom.wait(timeout=30)
    log.close()
    server.stop()


def test_prometheus_scrapes_ttft_and_token_counts(stubs, prometheus_and_server):
    server, port = prometheus_and_server
    assert wait_for(port, 'up{job="attnserve"}', 1.0) == 1.0, "Prometheus never scraped the server"
    for i in range(N_REQUESTS):
        messages = generate(stubs, server, prompt=f"Count to {i + 3}:",
                            sampling={"max_tokens": MAX_TOKENS, "ignore_eos": True})
        assert messages[-1].usage.completion_tokens == MAX_TOKENS
    assert wait_for(port, "attnserve_generation_tokens_total", N_REQUESTS * MAX_TOKENS) == N_REQUESTS * MAX_TOKENS
    assert wait_for(port, "attnserve_time_to_first_token_seconds_count", N_REQUESTS) == N_REQUESTS
    ttft_sum = query(port, "attnserve_time_to_first_token_seconds_sum")[0]
    assert 0 < ttft_sum < 60 * N_REQUESTS
    assert wait_for(port, 'attnserve_request_success_total{finish_reason="length"}', N_REQUESTS) == N_REQUESTS
    median = query(port, "histogram_quantile(0.5, attnserve_time_to_first_token_seconds_bucket)")[0]
    print(f"\nPrometheus: {N_REQUESTS * MAX_TOKENS} generation tokens, TTFT sum {ttft_sum:.3f} s, median {median:.4f} s")
    assert 0 < median < 60
