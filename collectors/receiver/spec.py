"""The receiver stage (``observer collect``), as the shell's registry sees it: :data:`SPEC`.

A producer: the runtime starts its HTTP and gRPC servers (and mounts the KServe logger
route on the HTTP one) rather than a consumer group.
"""

from __future__ import annotations

from observer.core.stage import StageSpec

SPEC = StageSpec(
    name="collect",
    help="run the OTLP receivers and the KServe logger intake",
    description="Accept OTLP traces, metrics and logs over HTTP (receiver.http_port, 4318) "
    "and gRPC (receiver.grpc_port, 4317), and KServe inference logger CloudEvents on "
    "POST /v1/kserve; write them to Kafka as received.",
    config_section="receiver",
    kind="producer",
    sources=("OTLP/HTTP", "OTLP/gRPC", "KServe logger"),
    outputs=("spans", "metrics", "logs", "kserve_events"),
)
