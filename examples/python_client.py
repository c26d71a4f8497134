#!/usr/bin/env python3
"""Streams one completion from an attnserve server, printing text as it arrives.

    .venv/bin/python examples/python_client.py --target 127.0.0.1:50051 \
        --prompt "Write a haiku about the sea." --chat --max-tokens 64

Needs grpcio and grpcio-tools; the Python stubs are generated from proto/ at
start into a temporary directory, so they always match the server's protos.
"""
import argparse
import importlib
import sys
import tempfile
from pathlib import Path

import grpc

PROTO_DIR = Path(__file__).resolve().parents[1] / "proto"


def load_stubs(out_dir):
    """Compiles proto/attnserve/v1/*.proto into out_dir; returns (messages, services) modules."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "attnserve" / "v1").glob("*.proto"))
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{well_known}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
    if protoc.main(args + protos) != 0:
        raise RuntimeError(f"protoc failed on {protos}")
    sys.path.insert(0, str(out_dir))
    return (importlib.import_module("attnserve.v1.generation_pb2"),
            importlib.import_module("attnserve.v1.generation_pb2_grpc"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="server address")
    parser.add_argument("--prompt", default="Write a haiku about the sea.")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    parser.add_argument("--chat", action="store_true", help="send the prompt as one user message (chat template)")
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline of the call in seconds")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="attnserve-stubs-") as tmp:
        pb, pb_grpc = load_stubs(tmp)
        request = pb.GenerateRequest(sampling={"max_tokens": args.max_tokens, "temperature": args.temperature})
        if args.chat:
            request.messages.messages.add(role="user", content=args.prompt)
        else:
            request.prompt = args.prompt
        with grpc.insecure_channel(args.target) as channel:
            stub = pb_grpc.GenerationStub(channel)
            try:
                for response in stub.Generate(request, timeout=args.timeout):
                    print(response.text, end="", flush=True)
                    if response.finished:
                        print(f"\n[{response.request_id}] finish_reason={pb.FinishReason.Name(response.finish_reason)}"
                              f" prompt_tokens={response.usage.prompt_tokens}"
                              f" completion_tokens={response.usage.completion_tokens}"
                              f" ttft={response.metrics.time_to_first_token_seconds:.3f}s", file=sys.stderr)
            except grpc.RpcError as e:
                print(f"\nerror: {e.code().name}: {e.details()}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
