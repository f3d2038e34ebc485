#!/usr/bin/env python
"""Exit 0 when every gRPC target reports SERVING on the standard grpc.health.v1 service, 1 otherwise.

The image's Docker HEALTHCHECK; the chart's readiness probe when TLS is on (Kubernetes' native gRPC probes speak
plaintext only); and its `helm test`, which adds `--check-answer CHECKER` to make one real Check call.
Usage: grpc-health-check [--ca FILE [--server-name NAME]] [--service NAME] [--check-answer TARGET] TARGET [TARGET...]
`--check-answer` sends the bearer token in LEMA_GRPC_TOKEN when that is set (health checks need none).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def channel(target: str, ca: Path | None = None, server_name: str | None = None) -> grpc.Channel:
    """Plaintext, or TLS verified against `ca` (`server_name`: the name the certificate carries, if not `target`'s)."""
    if ca is None:
        return grpc.insecure_channel(target)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(ca.read_bytes()), options)


def check(
    target: str, service: str = "", timeout_s: float = 3.0, ca: Path | None = None, server_name: str | None = None
) -> bool:
    with channel(target, ca, server_name) as opened:
        stub = health_pb2_grpc.HealthStub(opened)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            print(f"{target} {service!r}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return False
    status: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if status != "SERVING":
        print(f"{target} {service!r}: {status}", file=sys.stderr)
    return status == "SERVING"


def check_answer(target: str, timeout_s: float = 30.0, ca: Path | None = None, server_name: str | None = None) -> bool:
    """One CheckerService.Check whose answer is known (12 is 12): the whole call path, auth included, works."""
    from lema.v1 import checker_pb2, checker_pb2_grpc

    token = os.environ.get("LEMA_GRPC_TOKEN")
    metadata = [("authorization", f"Bearer {token}")] if token else None
    request = checker_pb2.CheckRequest(response="So she has 12 apples. The answer is 12.", gold="12", task="gsm8k")
    with channel(target, ca, server_name) as opened:
        try:
            reply = checker_pb2_grpc.CheckerServiceStub(opened).Check(request, timeout=timeout_s, metadata=metadata)
        except grpc.RpcError as exc:
            print(f"{target} Check: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return False
    if not reply.correct:
        print(f"{target} Check: judged a correct answer wrong ({reply.reason})", file=sys.stderr)
    return bool(reply.correct)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="grpc-health-check", description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", metavar="TARGET", help="HOST:PORT of a gRPC server")
    parser.add_argument("--service", default="", help="health service name; '' = the server as a whole")
    parser.add_argument("--ca", type=Path, help="CA certificate (PEM): speak TLS and verify the server with it")
    parser.add_argument("--server-name", help="name to verify in the server's certificate (with --ca)")
    parser.add_argument("--check-answer", metavar="TARGET", help="also call CheckerService.Check on this checker")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per health call")
    args = parser.parse_args(argv)
    healthy = [check(t, args.service, args.timeout, args.ca, args.server_name) for t in args.targets]
    if args.check_answer:
        healthy.append(check_answer(args.check_answer, ca=args.ca, server_name=args.server_name))
    return 0 if all(healthy) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
