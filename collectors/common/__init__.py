"""Pieces every collectors stage shares, so that no stage imports another.

- :mod:`~observer.collectors.common.tenancy` and :mod:`~observer.collectors.common.tenant_seal`:
  the tenant a receiver stamps and seals, and how consumers trust it;
- :mod:`~observer.collectors.common.otlp_messages`: opening and parsing ``otlp_*`` messages;
- :mod:`~observer.collectors.common.otlp_attributes`: attributes, service and tenant of a resource;
- :mod:`~observer.collectors.common.genai_mapping`: the semantic-convention table as data.
"""
