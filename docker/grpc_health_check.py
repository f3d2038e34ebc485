#!/usr/bin/env python
"""Exit 0 when a gRPC server reports SERVING on the standard grpc.health.v1 service, 1 otherwise.

The image's Docker HEALTHCHECK; Kubernetes probes the same service natively, so both agree on what healthy means.
Usage: grpc-health-check HOST:PORT [SERVICE]   (SERVICE "" = the server as a whole)
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(target: str, service: str = "", timeout_s: float = 3.0) -> bool:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            print(f"{target} {service!r}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return False
    status: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if status != "SERVING":
        print(f"{target} {service!r}: {status}", file=sys.stderr)
    return status == "SERVING"


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    sys.exit(0 if check(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else "") else 1)
