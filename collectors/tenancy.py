"""Bearer tokens to tenants, and the tenant stamped on every resource of an export request.

The receiver stamps the tenant it authenticated as the resource attribute ``observer.tenant``,
replacing whatever the client sent there, so a tenant cannot write under another's name; the
normaliser and trace grouping copy it onto every record. Without tenancy the attribute is
removed, so records carry the empty tenant. Messages an OpenTelemetry Collector writes to Kafka
directly keep theirs: whoever can write to Kafka is trusted already.

>>> auth = Authenticator(None, {"acme": SecretStr("t-acme"), "globex": SecretStr("t-globex")})
>>> auth.required, auth.tenant_of("Bearer t-globex"), auth.tenant_of("Bearer nope")
(True, 'globex', None)
>>> Authenticator(None, {}).tenant_of(None)
''
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from pydantic import SecretStr

TENANT_ATTRIBUTE = "observer.tenant"


class Authenticator:
    """Resolves an ``Authorization`` header to a tenant name.

    ``auth_token`` is the single-tenant token (its tenant is ""); ``tenants`` maps tenant
    names to their tokens. With neither, every request is the "" tenant.
    """

    def __init__(self, auth_token: SecretStr | None, tenants: dict[str, SecretStr]) -> None:
        self._tokens: list[tuple[bytes, str]] = [
            (secret.get_secret_value().encode(), name) for name, secret in tenants.items()
        ]
        if auth_token is not None:
            self._tokens.append((auth_token.get_secret_value().encode(), ""))

    @property
    def required(self) -> bool:
        return bool(self._tokens)

    def tenant_of(self, header: str | None) -> str | None:
        """The tenant of ``Bearer <token>``; None when auth is required and the token is wrong.

        Every configured token is compared, in constant time, so timing tells nothing about
        which (if any) matched.
        """
        if not self._tokens:
            return ""
        scheme, _, credentials = (header or "").partition(" ")
        offered = credentials.strip().encode()
        found: str | None = None
        for token, tenant in self._tokens:
            if hmac.compare_digest(offered, token) and found is None:
                found = tenant
        return found if scheme.lower() == "bearer" else None


def stamp(resources: Iterable[Resource], tenant: str) -> None:
    """Set ``observer.tenant`` on each resource to ``tenant`` (remove it when "").

    >>> from opentelemetry.proto.common.v1.common_pb2 import KeyValue
    >>> r = Resource(attributes=[KeyValue(key=TENANT_ATTRIBUTE,
    ...                                   value=AnyValue(string_value="spoofed"))])
    >>> stamp([r], "acme"); [(a.key, a.value.string_value) for a in r.attributes]
    [('observer.tenant', 'acme')]
    >>> stamp([r], ""); len(r.attributes)
    0
    """
    for resource in resources:
        kept = [kv for kv in resource.attributes if kv.key != TENANT_ATTRIBUTE]
        if len(kept) != len(resource.attributes):
            del resource.attributes[:]
            resource.attributes.extend(kept)
        if tenant:
            resource.attributes.add(key=TENANT_ATTRIBUTE, value=AnyValue(string_value=tenant))
