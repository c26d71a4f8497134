"""Shared by bench/policy_quality.py and bench/policy_decode.py: the attention
policy configurations they compare, the server they run against, and calls
that turn a policy the server does not implement into a recorded outcome
instead of an exception.

Every configuration is an AttentionPolicy in the proto's JSON form
(json_format.ParseDict), so a policy that lands in the server is measured by
the next run without touching the scripts: until then the server answers
UNIMPLEMENTED and the scripts record "unimplemented" with its message.
"""
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))

import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402

import grpc_stubs  # noqa: E402
from server_process import ServerProcess  # noqa: E402

DEFAULT_MODEL = ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_BINARY = Path(os.environ.get("ATTNSERVE_BIN", ROOT / "build/server/attnserve"))
LICENSES = Path("/usr/share/common-licenses")


# Head profiles made by `attnserve profile` (profiles/), served to every bench run.
PROFILE_DIR = ROOT / "profiles"
PROFILE = "smollm2-135m"


def streaming(window, sinks=4, positions="ORIGINAL"):
    return {"streaming": {"sink_tokens": sinks, "window_tokens": window, "positions": positions}}


def duo_heads(info):
    """DuoAttention needs its retrieval heads (from a profile, or listed). Without
    a profile we list the query heads of KV group 0 in every layer (a third of
    the heads, whole KV groups so that the streaming groups' memory is bounded)."""
    group = info.n_heads // info.n_kv_heads
    return [{"layer": layer, "head": h} for layer in range(info.n_layers) for h in range(group)]


def configs(info):
    """name -> (label, policy JSON). `info` is the server's ModelInfo."""
    n = info.n_layers * info.n_heads
    return {
        "dense": ("dense", {}),
        "streaming_w1024_s4": ("streaming w1024 s4", streaming(1024, 4)),
        "streaming_w1024_s0": ("streaming w1024 s0", streaming(1024, 0)),
        "streaming_w256_s4": ("streaming w256 s4", streaming(256, 4)),
        "streaming_w256_s0": ("streaming w256 s0", streaming(256, 0)),
        "streaming_cache_w1024_s4": ("streaming CACHE w1024 s4", streaming(1024, 4, "CACHE")),
        "virtual_sink_0": ("virtual sink b=0", {"virtual_sink": {"logit": 0.0}}),
        "zero_tuning_0.5": ("zero-tuning g=0.5", {"zero_tuning": {"gamma": 0.5}}),
        "zero_tuning_2": ("zero-tuning g=2", {"zero_tuning": {"gamma": 2.0}}),
        "temperature_1.2": ("temperature 1.2", {"temperature": {"factors": [1.2] * n}}),
        "act": ("ACT (defaults)", {"act": {}}),
        "duo": ("duo (KV group 0 retrieval)", {"duo": {"retrieval_heads": duo_heads(info)}}),
        "duo_profile": ("duo (profile's heads)", {"duo": {}, "profile": PROFILE}),
        "sparse_256": ("Quest budget 256", {"sparse": {"token_budget": 256}}),
        "sparse_512": ("Quest budget 512", {"sparse": {"token_budget": 512}}),
        "sparse_1024": ("Quest budget 1024", {"sparse": {"token_budget": 1024}}),
        "sparse_2048": ("Quest budget 2048", {"sparse": {"token_budget": 2048}}),
        "linear_w256_s4": ("linear w256 s4", {"linear": {"window_tokens": 256, "sink_tokens": 4}}),
        "linear_w1024_s4": ("linear w1024 s4", {"linear": {"window_tokens": 1024, "sink_tokens": 4}}),
    }


class Outcome(Exception):
    """A call that did not produce a measurement: status is 'unimplemented',
    'invalid' (INVALID_ARGUMENT) or 'error: CODE'."""

    def __init__(self, status, message):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message

    def record(self):
        return {"status": self.status, "message": self.message}


def call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except grpc.RpcError as e:
        code = e.code()
        if code == grpc.StatusCode.UNIMPLEMENTED:
            raise Outcome("unimplemented", e.details()) from None
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise Outcome("invalid", e.details()) from None
        raise Outcome(f"error: {code.name}", e.details()) from None


class Bench:
    """The server on ephemeral ports plus stubs and small helpers."""

    def __init__(self, binary, model, threads, *extra):
        extra = ("--profile-dir", str(PROFILE_DIR), *extra)
        self.tmp = Path(tempfile.mkdtemp(prefix="attnserve_bench_"))
        self.stubs = grpc_stubs.generate(self.tmp / "stubs")
        self.pb = self.stubs.pb
        self.binary, self.model = Path(binary), Path(model)
        self.server = ServerProcess(self.binary, self.model, self.tmp / "server.log", "--threads", str(threads),
                                    *extra)
        self.stub = self.stubs.pb_grpc.GenerationStub(self.server.channel)
        self.info = self.stub.GetModelInfo(self.pb.GetModelInfoRequest(), timeout=30)
        self.server_info = self.stub.GetServerInfo(self.pb.GetServerInfoRequest(), timeout=30)

    def stop(self):
        self.server.stop()

    def policy(self, policy_json):
        return json_format.ParseDict(policy_json, self.stubs.attention_pb.AttentionPolicy())

    def tokenize(self, text, add_special=True, parse_special=False):
        r = self.stub.Tokenize(self.pb.TokenizeRequest(text=text, add_special=add_special,
                                                       parse_special=parse_special), timeout=120)
        return list(r.token_ids), list(r.offsets)

    def score(self, ids, policy_json, prompt_tokens=None, timeout=3600):
        """Score; tokens past prompt_tokens are scored as generated ones (decode-only policies act there)."""
        request = self.pb.ScoreRequest(token_ids=self.pb.TokenIds(ids=ids), attention=self.policy(policy_json))
        if prompt_tokens is not None:
            request.prompt_tokens = min(prompt_tokens, len(ids))
        return call(self.stub.Score, request, timeout=timeout)

    def generate(self, policy_json, timeout=3600, on_message=None, **fields):
        """All messages of one Generate call; on_message(message, t) is called as each arrives."""
        request = self.pb.GenerateRequest(attention=self.policy(policy_json), **fields)

        def run():
            messages = []
            for m in self.stub.Generate(request, timeout=timeout):
                t = time.perf_counter()
                messages.append((t, m))
                if on_message:
                    on_message(m, t)
            return messages

        return call(run)

    def page_bytes(self):
        """Bytes of one KV page: keys and values in fp16 for every layer and KV head."""
        i = self.info
        return i.kv_page_size * i.n_layers * i.n_kv_heads * i.head_dim * 2 * 2

    def implemented(self):
        return {p.name: p.implemented for p in self.info.policies}


def license_texts():
    """The distinct license texts that ship with Debian (symlinked duplicates dropped),
    Apache-2.0, GPL-3 and LGPL-2.1 first, the others in name order."""
    first = ["Apache-2.0", "GPL-3", "LGPL-2.1"]
    names = first + sorted(p.name for p in LICENSES.iterdir() if p.name not in first)
    seen, out = set(), []
    for name in names:
        data = (LICENSES / name).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest not in seen:
            seen.add(digest)
            out.append((name, data.decode("utf-8", errors="replace")))
    return out


def source_state():
    """The source revision the binary was built from, as far as git says (read-only)."""
    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except Exception:  # noqa: BLE001 - git is optional here
            return ""
    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty_files": len(git("status", "--porcelain").splitlines())}


def machine():
    import platform
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model or platform.machine(), "cores": os.cpu_count(), "loadavg_at_start": os.getloadavg()[0]}


def clock(start):
    s = int(time.perf_counter() - start)
    return f"{s // 60:02d}:{s % 60:02d}"


def stop_on_sigterm():
    """SIGTERM unwinds like Ctrl-C, so the scripts' `finally` stops the server and saves the JSON."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)
