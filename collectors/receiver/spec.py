"""The receiver stage (``observer collect``), as the shell's registry sees it: :data:`SPEC`.

A producer: the runtime starts its HTTP and gRPC servers (and mounts the KServe logger
route on the HTTP one) rather than a consumer group.
"""

from __future__ import annotations

from observer.core.stage import StageSpec

SPEC = StageSpec(
    name="collect",
    help="run the OTLP receivers, the KServe logger and the annotations intakes",
    description="Accept OTLP traces, metrics and logs over HTTP (receiver.http_port, 4318) "
    "and gRPC (receiver.grpc_port, 4317), and KServe inference logger CloudEvents on "
    "POST /v1/kserve; write them to Kafka as received. Take post-hoc scores and user feedback "
    "in Phoenix's body on POST /v1/span_annotations (and trace_, session_annotations) as "
    "evaluation records.",
    config_section="receiver",
    kind="producer",
    sources=("OTLP/HTTP", "OTLP/gRPC", "KServe logger", "Phoenix annotations"),
    outputs=("spans", "metrics", "logs", "kserve_events", "evals"),
)
