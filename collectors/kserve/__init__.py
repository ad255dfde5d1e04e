"""KServe inference logging: the ``POST /v1/kserve`` route the receiver mounts
(:mod:`~observer.collectors.kserve.intake`) writes CloudEvents
(:mod:`~observer.collectors.kserve.cloud_events`) to ``observer.kserve-events``; the pairing stage
(:mod:`~observer.collectors.kserve.pairing`) joins each request to its response, read with
:mod:`~observer.collectors.kserve.inference_protocol`, into ``observer.predictions``.
"""
