"""Bearer tokens to tenants, and the tenant stamped on every resource of an export request.

The receiver stamps the tenant it authenticated as the resource attribute ``observer.tenant``,
replacing whatever the client sent there, so a tenant cannot write under another's name; the
normaliser and trace grouping copy it onto every record. Without tenancy the attribute is
removed, so records carry the empty tenant. The stages believe the attribute only on messages
a receiver sealed when a stamp key is in use (:mod:`observer.collectors.common.tenant_seal`: always with the
embedded broker and tenants); without one, messages an OpenTelemetry Collector writes to Kafka
directly keep theirs: whoever can write to that Kafka is trusted.

>>> auth = Authenticator(None, {"acme": SecretStr("t-acme"), "globex": SecretStr("t-globex")})
>>> auth.required, auth.tenant_of(["Bearer t-globex"]), auth.tenant_of(["Bearer nope"])
(True, 'globex', None)
>>> Authenticator(None, {}).tenant_of([])
''
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from pydantic import SecretStr

from observer.core.authorization import bearer_token, matches

TENANT_ATTRIBUTE = "observer.tenant"


class Authenticator:
    """Resolves a request's ``Authorization`` headers to a tenant name.

    ``auth_token`` is the single-tenant token (its tenant is ""); ``tenants`` maps tenant
    names to their tokens. With neither, every request is the "" tenant. Empty tokens are
    refused here too (the configuration refuses them first): they would match nothing anyway.
    """

    def __init__(self, auth_token: SecretStr | None, tenants: dict[str, SecretStr]) -> None:
        named = [*tenants.items(), *([("", auth_token)] if auth_token is not None else [])]
        empty = [n or "auth_token" for n, secret in named if not secret.get_secret_value().strip()]
        if empty:
            raise ValueError(f"empty bearer token for {', '.join(empty)}")
        self._tenants = [name for name, _ in named]
        self._tokens = [secret.get_secret_value().encode() for _, secret in named]

    @property
    def required(self) -> bool:
        return bool(self._tokens)

    def tenant_of(self, authorization: Sequence[str | bytes]) -> str | None:
        """The tenant of ``Bearer <token>``, given every ``Authorization`` value of the
        request; None when auth is required and the token is missing or wrong.

        More than one value raises :class:`~observer.core.authorization.DuplicateAuthorization`,
        with or without auth, so every listener treats such a request alike.
        """
        offered = bearer_token(authorization)
        if not self._tokens:
            return ""
        found = matches(offered, self._tokens)
        return None if found is None else self._tenants[found]


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
