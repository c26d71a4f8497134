"""`attnserve serve` as a child process for end-to-end tests, and small
helpers for talking to it."""
import re
import signal
import subprocess
import time
import urllib.request

import grpc
import pytest

from conftest import BACKEND, THREADS

START_TIMEOUT_S = 120


class ServerProcess:
    """`attnserve serve` on ephemeral ports; stderr (the request log) goes to a file."""

    def __init__(self, binary, model, log_path, *extra):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [str(binary), "serve", "--model", str(model), "--host", "127.0.0.1", "--port", "0",
             "--metrics-port", "0", "--threads", str(THREADS), "--backend", BACKEND, *extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()  # blocks until the server listens or exits
        match = re.search(r"serving on \S+:(\d+), metrics on :(\d+)", line)
        if not match:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"server did not start: {line!r}\n{log_path.read_text()}")
        self.port, self.metrics_port = int(match.group(1)), int(match.group(2))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        grpc.channel_ready_future(self.channel).result(timeout=START_TIMEOUT_S)

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def metric(self, name, labels=""):
        """Value of one sample, e.g. metric("attnserve_request_errors_total", 'code="INVALID_ARGUMENT"')."""
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            if sample == name or (sample.startswith(name + "{") and labels in sample):
                return float(value)
        return None

    def stop(self):
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def generate(stubs, server, timeout=120, **fields):
    """All messages of one Generate call."""
    stub = stubs.pb_grpc.GenerationStub(server.channel)
    return list(stub.Generate(stubs.pb.GenerateRequest(**fields), timeout=timeout))


def wait_for_metric(server, name, want, timeout_s=15):
    deadline = time.monotonic() + timeout_s
    while True:
        value = server.metric(name)
        if value == want or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def tiny_model_server(binary, tmp_path_factory, context, name):
    """`attnserve serve` on a tiny random Llama (tiny_llama.py) with its context set to `context`."""
    import tiny_llama

    model = tiny_llama.write_tiny_llama(tmp_path_factory.mktemp(f"{name}_model") / f"tiny-{context}.F32.gguf",
                                        context=context)
    return ServerProcess(binary, model, tmp_path_factory.mktemp(name) / "stderr.log")
