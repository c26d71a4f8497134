"""A real Prometheus server (Debian's `prometheus`), configured by
deploy/prometheus (its scrape config and rules), scrapes `attnserve serve`;
the tests read TTFT and token counts back through Prometheus' HTTP API, and
run every query of the Grafana dashboard (deploy/grafana) against it."""
import json
import math
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import grpc
import pytest
import yaml

from conftest import ROOT
from server_process import ServerProcess, generate

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
N_REQUESTS = 4
MAX_TOKENS = 8
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "attnserve.json"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(port, path):
    """The data of a Prometheus HTTP API answer, which must be a success."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/{path}", timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]


def query(port, expr):
    result = api(port, "query?" + urllib.parse.urlencode({"query": expr}))["result"]
    return [float(sample["value"][1]) for sample in result]


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
    # deploy/prometheus/prometheus.yml with its target this server, its rules
    # found where they are, and a faster scrape.
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{server.metrics_port}"]}]
    config_path = tmp / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp / "prometheus.log", "w")
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={config_path}", f"--storage.tsdb.path={tmp / 'data'}",
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


def dashboard_queries():
    """(panel title, PromQL) of every target of the Grafana dashboard, with its
    variables set as Grafana would for "All" and a 1-minute rate window."""
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m")
            yield panel["title"], re.sub(r"\$(job|instance)\b", ".*", expr)


def test_every_metric_is_on_the_dashboard(prometheus_and_server):
    server, _ = prometheus_and_server
    exported = {m.group(1) for m in re.finditer(r"^# TYPE (attnserve_\w+) ", server.metrics(), re.M)}
    assert len(exported) >= 20, exported
    on_dashboard = {name for _, expr in dashboard_queries() for name in re.findall(r"attnserve_\w+", expr)}
    on_dashboard = {re.sub(r"_(bucket|sum|count)$", "", name) for name in on_dashboard}
    assert exported - on_dashboard == set(), "metrics no dashboard panel shows"
    assert on_dashboard - exported == set(), "dashboard queries of metrics the server does not export"


def test_dashboard_queries_and_recording_rules_return_data(stubs, prometheus_and_server):
    server, port = prometheus_and_server
    assert wait_for(port, 'up{job="attnserve"}', 1.0) == 1.0, "Prometheus never scraped the server"
    # A policy request (requests_total{mode="dense", sink="streaming"}) and a
    # refused one (request_errors_total{code="INVALID_ARGUMENT"}).
    messages = generate(stubs, server, prompt="Name three colours:", attention={"streaming": {"window_tokens": 64}},
                        sampling={"max_tokens": MAX_TOKENS, "ignore_eos": True})
    assert messages[-1].usage.completion_tokens == MAX_TOKENS
    with pytest.raises(grpc.RpcError) as e:
        generate(stubs, server, prompt="hi", sampling={"top_p": 2.0})
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    queries = list(dashboard_queries())
    assert len(queries) >= 25
    # A valid query (else query() fails) with a number to show: a quantile
    # or a ratio of nothing is NaN.
    pending = dict.fromkeys(queries)
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        for title, expr in list(pending):
            if any(math.isfinite(v) for v in query(port, expr)):
                del pending[(title, expr)]
        time.sleep(1)
    assert not pending, f"dashboard queries without a finite value: {list(pending)}"
    # Tokens within the rules' 1-minute window, however long the above took.
    generate(stubs, server, prompt="Name three animals:", sampling={"max_tokens": MAX_TOKENS, "ignore_eos": True})
    for rule in ("job:attnserve_generation_tokens:rate1m", "job:attnserve_prompt_tokens:rate1m"):
        deadline = time.monotonic() + 30
        while not [v for v in query(port, rule) if v > 0]:
            assert time.monotonic() < deadline, f"recording rule {rule} never recorded a rate"
            time.sleep(1)
    alerts = [a["labels"]["alertname"] for a in api(port, "alerts")["alerts"]]
    assert alerts == [], f"alerts pending or firing on a healthy server: {alerts}"
