"""Shared fixtures: where the attnserve build and the models are, and a
llama.cpp (llama-cpp-python) reference on the same GGUF."""
import json
import os
import subprocess
from pathlib import Path

import pytest

import grpc_stubs

ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = Path(os.environ.get("ATTNSERVE_BUILD_DIR", ROOT / "build"))
MODEL = Path(os.environ.get("ATTNSERVE_MODEL", ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
QUANTIZED_DIR = Path(os.environ.get("ATTNSERVE_QUANTIZED_DIR", ROOT / "models" / "quantized"))
THREADS = 2
# The backend the servers under test run on: the CPU unless a GPU run asks
# for cuda (scripts/gpu-check.sh).
BACKEND = os.environ.get("ATTNSERVE_TEST_BACKEND", "cpu")
# Real text that ships with every Debian system; never downloaded.
LICENSE_TEXTS = [Path("/usr/share/common-licenses") / n for n in ("Apache-2.0", "GPL-3", "LGPL-2.1")]


@pytest.fixture(scope="session")
def attnserve_bin():
    path = BUILD_DIR / "server" / "attnserve"
    if not path.exists():
        pytest.fail(f"{path} is missing: build first (scripts/build.sh)")
    return path


@pytest.fixture(scope="session")
def model_path():
    if not MODEL.exists():
        pytest.fail(f"{MODEL} is missing: run scripts/setup.sh")
    return MODEL


def run_attnserve(binary, *args, timeout=600):
    """Runs an attnserve subcommand and returns its stdout; fails the test with stderr on error."""
    proc = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"attnserve {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc.stdout


def run_attnserve_json(binary, *args, timeout=600):
    return json.loads(run_attnserve(binary, *args, "--json", timeout=timeout))


def llama_reference(path, n_ctx=2048, logits_all=True):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=512, n_threads=THREADS, logits_all=logits_all,
                 verbose=False, seed=0)


@pytest.fixture(scope="session")
def stubs(tmp_path_factory):
    return grpc_stubs.generate(tmp_path_factory.mktemp("stubs"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random Llama GGUF (tests/python/tiny_llama.py), written once per session."""
    import tiny_llama

    return tiny_llama.write_tiny_llama(tmp_path_factory.mktemp("tiny_model") / "tiny-llama.F32.gguf")
