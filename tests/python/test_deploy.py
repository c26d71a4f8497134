"""The deployment files (deploy/, docker/) against the tools that read them:
promtool for the Prometheus config and rules (with the rules' unit tests),
the Kubernetes API schemas for the manifests, `attnserve serve` itself for
the flags they pass, and each other for the names and ports they share."""
import json
import re
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from conftest import ROOT
from server_process import ServerProcess

DEPLOY = ROOT / "deploy"
DOCKER = ROOT / "docker"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
KUBERNETES_VERSION = "1.30.0"  # the first with the preStop sleep on by default


def promtool(*args, cwd):
    if not shutil.which(PROMTOOL):
        pytest.fail(f"{PROMTOOL} is missing: run scripts/setup.sh (Debian package prometheus)")
    proc = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_prometheus_config_and_rules_are_valid():
    out = promtool("check", "config", "prometheus.yml", cwd=DEPLOY / "prometheus")
    assert "1 rule files found" in out


def test_alerts_and_recording_rules_pass_their_unit_tests():
    out = promtool("test", "rules", "attnserve-rules.test.yml", cwd=DEPLOY / "prometheus")
    assert "SUCCESS" in out
    # Every recorded series has its value checked, and every alert is seen
    # firing and staying quiet.
    rules = yaml.safe_load((DEPLOY / "prometheus" / "attnserve-rules.yml").read_text())
    tests = yaml.safe_load((DEPLOY / "prometheus" / "attnserve-rules.test.yml").read_text())["tests"]
    checked = {t["expr"] for test in tests for t in test.get("promql_expr_test", []) if t["exp_samples"]}
    fires = {t["alertname"] for test in tests for t in test.get("alert_rule_test", []) if t["exp_alerts"]}
    quiet = {t["alertname"] for test in tests for t in test.get("alert_rule_test", []) if not t["exp_alerts"]}
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                assert rule["record"] in checked, f"{rule['record']}: no test checks its value"
            else:
                assert rule["alert"] in fires, f"{rule['alert']}: no test sees it fire"
                assert rule["alert"] in quiet, f"{rule['alert']}: no test sees it stay quiet"


def kubernetes_documents():
    docs = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_kubernetes_manifests_match_the_api_schema():
    docs = kubernetes_documents()
    assert {d["kind"] for _, d in docs} >= {"Deployment", "Service"}
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {e.message} at {list(e.path)}")


def flag_value(args, name):
    for a in args:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    raise AssertionError(f"--{name} not among {args}")


def test_kubernetes_probes_ports_and_service_agree_with_the_server_flags():
    docs = {d["kind"]: d for _, d in kubernetes_documents()}
    pod = docs["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    args = container["args"]
    grpc_port, metrics_port = int(flag_value(args, "port")), int(flag_value(args, "metrics-port"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": grpc_port, "metrics": metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == grpc_port, probe
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)
    service = docs["Service"]["spec"]
    assert service["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    assert {p["targetPort"] for p in service["ports"]} == set(ports)
    # Room for the drain: SIGKILL comes terminationGracePeriodSeconds after
    # the preStop hook starts; the server stops 5 s after the drain
    # (kShutdownGrace in server/server.cc), for clients to read the last
    # messages.
    drain = flag_value(args, "drain-timeout")
    assert re.fullmatch(r"\d+s", drain), drain
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop + int(drain[:-1]) + 5 < pod["spec"]["terminationGracePeriodSeconds"]
    # A pod a restricted namespace admits: a numeric non-root user (the
    # image's USER), no privilege escalation, no capabilities.
    dockerfile_user = re.search(r"^USER (\d+):(\d+)$", (DOCKER / "Dockerfile").read_text(), re.M)
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] and security["seccompProfile"]["type"] == "RuntimeDefault"
    assert (security["runAsUser"], security["runAsGroup"]) == tuple(map(int, dockerfile_user.groups()))
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # A replica holds a whole GPU: a rollout must not ask for one more.
    rollout = docs["Deployment"]["spec"]["strategy"]
    assert rollout["type"] == "Recreate" or rollout["rollingUpdate"]["maxSurge"] == 0


def compose(name):
    return yaml.safe_load((DOCKER / name).read_text())["services"]


def server_commands():
    """(where, `attnserve serve` arguments) of every deployment file."""
    (deployment,) = [d for _, d in kubernetes_documents() if d["kind"] == "Deployment"]
    yield "kubernetes", deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    for name in ("compose.yaml", "compose.cuda.yaml"):
        yield name, compose(name)["attnserve"]["command"]


@pytest.mark.parametrize("where,args", list(server_commands()), ids=lambda v: v if isinstance(v, str) else "")
def test_deployment_server_flags_start_the_server(attnserve_bin, model_path, tmp_path, where, args):
    """The flags a deployment file passes, as the server parses them: it
    starts with them (only where it listens and its backend changed for this
    machine)."""
    assert args[0] == "serve"
    kept = [a for a in args[1:] if not re.match(r"--(host|port|metrics-port|backend)=", a)]
    # ServerProcess passes its own --model, --host, ports and backend first;
    # the file's flags come after them.
    server = ServerProcess(attnserve_bin, model_path, tmp_path / "server.log", *kept)
    try:
        assert server.metric("attnserve_num_requests_running") == 0
    finally:
        server.stop()


def test_compose_services_find_each_other():
    services = compose("compose.yaml")
    assert set(services) == {"attnserve", "prometheus", "grafana"}
    # Prometheus scrapes the server's service at its metrics port, reading
    # its config and rules from the mounted deploy/prometheus.
    metrics_port = flag_value(services["attnserve"]["command"], "metrics-port")
    assert f"127.0.0.1:{metrics_port}:{metrics_port}" in services["attnserve"]["ports"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == [f"attnserve:{metrics_port}"]
    prom_args = services["prometheus"]["command"]
    config_dir = flag_value(prom_args, "config.file").rsplit("/", 1)[0]
    assert f"../deploy/prometheus:{config_dir}:ro" in services["prometheus"]["volumes"]
    # Grafana's provisioned data source is that Prometheus, and its
    # dashboards folder is where the provider looks.
    prom_port = flag_value(prom_args, "web.listen-address").rsplit(":", 1)[1]
    datasources = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasources["datasources"][0]["url"] == f"http://prometheus:{prom_port}"
    providers = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "attnserve.yml").read_text())
    dashboards_dir = providers["providers"][0]["options"]["path"]
    volumes = services["grafana"]["volumes"]
    assert f"../deploy/grafana/dashboards:{dashboards_dir}:ro" in volumes
    assert "../deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in volumes
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/attnserve.json"


def test_compose_builds_the_images_the_dockerfile_describes():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    build_args = set(re.findall(r"^ARG (\w+)", dockerfile, re.M))
    cuda = compose("compose.cuda.yaml")["attnserve"]
    assert set(cuda["build"]["args"]) <= build_args
    base = compose("compose.yaml")["attnserve"]
    # Paths in a compose file are relative to its folder.
    assert (DOCKER / base["build"]["context"]).resolve() == ROOT
    assert (ROOT / base["build"]["dockerfile"]) == DOCKER / "Dockerfile"
    # The image exposes the ports the server listens on by default.
    (exposed,) = re.findall(r"^EXPOSE (.+)$", dockerfile, re.M)
    ports = [flag_value(base["command"], "port"), flag_value(base["command"], "metrics-port")]
    assert exposed.split() == ports


def test_grafana_dashboard_is_well_formed():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "attnserve.json").read_text())
    assert dashboard["uid"] == "attnserve"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "job", "instance"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        cell = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & cell, f"{p['title']} overlaps another panel"
        cells |= cell
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            # Every query is scoped to the chosen servers.
            for selector in re.findall(r"attnserve_\w+(\{[^}]*\})?", t["expr"]):
                assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, t["expr"]
