"""Python gRPC stubs for the tests, generated from proto/ with grpcio-tools.

Besides attnserve.v1, the parts of grpc.health.v1 and
grpc.reflection.v1alpha the tests call are declared here (same package,
names and field numbers as the upstream protos), so the tests need no
packages beyond grpcio and grpcio-tools.
"""
import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"

HEALTH_PROTO = """
syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health { rpc Check(HealthCheckRequest) returns (HealthCheckResponse); }
"""

REFLECTION_PROTO = """
syntax = "proto3";
package grpc.reflection.v1alpha;
service ServerReflection {
  rpc ServerReflectionInfo(stream ServerReflectionRequest) returns (stream ServerReflectionResponse);
}
message ServerReflectionRequest {
  string host = 1;
  oneof message_request {
    string file_by_filename = 3;
    string file_containing_symbol = 4;
    string list_services = 7;
  }
}
message ServerReflectionResponse {
  string valid_host = 1;
  ServerReflectionRequest original_request = 2;
  oneof message_response {
    FileDescriptorResponse file_descriptor_response = 4;
    ListServiceResponse list_services_response = 6;
    ErrorResponse error_response = 7;
  }
}
message FileDescriptorResponse { repeated bytes file_descriptor_proto = 1; }
message ListServiceResponse { repeated ServiceResponse service = 1; }
message ServiceResponse { string name = 1; }
message ErrorResponse { int32 error_code = 1; string error_message = 2; }
"""


def generate(out_dir):
    """Compiles the protos into out_dir and imports them; returns a namespace of modules."""
    import grpc_tools
    from grpc_tools import protoc

    out_dir = Path(out_dir)
    # Not under a top-level "grpc" folder: that would shadow the grpc package.
    (out_dir / "attnserve_test_protos").mkdir(parents=True, exist_ok=True)
    (out_dir / "attnserve_test_protos" / "health.proto").write_text(HEALTH_PROTO)
    (out_dir / "attnserve_test_protos" / "reflection.proto").write_text(REFLECTION_PROTO)
    attnserve = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "attnserve" / "v1").glob("*.proto"))
    common = [f"-I{Path(grpc_tools.__file__).parent / '_proto'}", f"--python_out={out_dir}",
              f"--grpc_python_out={out_dir}"]
    if protoc.main(["protoc", f"-I{PROTO_DIR}", *common, *attnserve]) != 0:
        raise RuntimeError(f"protoc failed on {attnserve}")
    if protoc.main(["protoc", f"-I{out_dir}", *common, "attnserve_test_protos/health.proto",
                    "attnserve_test_protos/reflection.proto"]) != 0:
        raise RuntimeError("protoc failed on the health and reflection protos")
    sys.path.insert(0, str(out_dir))
    module = importlib.import_module
    return SimpleNamespace(
        pb=module("attnserve.v1.generation_pb2"),
        pb_grpc=module("attnserve.v1.generation_pb2_grpc"),
        attention_pb=module("attnserve.v1.attention_pb2"),
        health_pb=module("attnserve_test_protos.health_pb2"),
        health_grpc=module("attnserve_test_protos.health_pb2_grpc"),
        reflection_pb=module("attnserve_test_protos.reflection_pb2"),
        reflection_grpc=module("attnserve_test_protos.reflection_pb2_grpc"),
    )
