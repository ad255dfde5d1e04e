"""How much memory a request body costs once decoded: what the in-flight budget charges.

The receivers hold a body, its decoded form and the Kafka messages split from it at the same
time, so the memory of one request is several times its (inflated) body. The budget charges
``body bytes x factor`` with the factor of the body's encoding. Measured on export requests
of 5,000 to 20,000 spans (4 to 30 attributes each, values of 8 to 400 characters), peak RSS
growth of decode + split over the body already read, in a fresh process:

==========  ===========  ============================================================
encoding    measured     charged (the body's own copies, allocator slack on top)
==========  ===========  ============================================================
protobuf    4.1 - 8.7x   8
JSON        5.5 - 9.3x   16 (``json.loads`` builds a dict per value: 4.5 - 8.2x of the
                         body in Python objects alone, by ``tracemalloc``)
==========  ===========  ============================================================

Small-valued, attribute-heavy spans cost the most. With the defaults (``max_body_bytes``
16 MiB, ``max_inflight_bytes`` 256 MiB) the largest JSON body still fits the budget alone.

>>> charged(1000, "application/json"), charged(1000, "application/x-protobuf")
(16000, 8000)
>>> charged(1000, "application/cloudevents+json")  # anything else: as sent
1000
"""

from __future__ import annotations

FACTORS: dict[str, int] = {
    "application/json": 16,
    "application/x-protobuf": 8,
    "application/grpc": 8,  # the OTLP/gRPC receiver's protobuf messages
}
"""Media type -> bytes charged per body byte; unknown types (KServe bodies, which are kept
as sent) are charged 1."""


def factor(media_type: str) -> int:
    """Bytes charged per body byte of ``media_type``.

    >>> factor("application/json"), factor("text/plain")
    (16, 1)
    """
    return FACTORS.get(media_type, 1)


def charged(body_bytes: int, media_type: str) -> int:
    """What ``body_bytes`` of ``media_type`` cost the in-flight budget."""
    return body_bytes * factor(media_type)
