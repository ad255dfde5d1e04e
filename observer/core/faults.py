"""What kind of fault an exception is: the one table a supervised stage consults.

- ``PERMANENT``: retrying cannot help (a wrong configuration, credentials Kafka refuses): the
  stage fails and the process says why and exits non-zero.
- ``TRANSIENT``: the world will heal (a Kafka timeout, a rebalance, a broker restart): restart
  the stage with backoff, never quarantine anything.
- ``POISON``: anything else. Raised by ``processor.process(batch)`` it may be one bad message:
  the batch becomes suspect and is re-read one message at a time (see ``StageRunner``).

The first class of the exception's MRO that the table names decides, so a specific entry
(``TopicAuthorizationFailedError``) wins over a general one (``KafkaError``).

>>> from kafka.errors import CommitFailedError, TopicAuthorizationFailedError
>>> classify(CommitFailedError("rebalanced")).value
'transient'
>>> classify(TopicAuthorizationFailedError()).value
'permanent'
>>> classify(KeyError("span")).value
'poison'
"""

from __future__ import annotations

import enum

import kafka.errors as kafka_errors

from observer.core.config import ConfigError


class Fault(enum.Enum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    POISON = "poison"


def _kafka(*names: str) -> list[type[BaseException]]:
    """The named kafka-python errors that this version has (names moved between releases)."""
    found = (getattr(kafka_errors, n, None) for n in names)
    return [c for c in found if isinstance(c, type)]


FAULTS: dict[type[BaseException], Fault] = {
    # Permanent: configuration and credentials.
    ConfigError: Fault.PERMANENT,
    **{c: Fault.PERMANENT for c in _kafka(
        "AuthenticationFailedError",      # kafka-python 2.x
        "SaslAuthenticationFailedError",  # kafka-python 2.1+ and 3.x
        "AuthorizationError",             # base of every *AuthorizationFailedError in 3.x
        "TopicAuthorizationFailedError",
        "GroupAuthorizationFailedError",
        "ClusterAuthorizationFailedError",
        "TransactionalIdAuthorizationFailedError",
        "DelegationTokenAuthorizationFailedError",
        "UnsupportedSaslMechanismError",
        "UnsupportedCodecError",          # a compression codec this install lacks
    )},
    # An output bigger than any broker accepts: the message that produced it is the poison.
    **{c: Fault.POISON for c in _kafka("MessageSizeTooLargeError", "RecordTooLargeError")},
    # Transient: every other Kafka error (timeouts, CommitFailedError after a rebalance or a
    # stopped process, no broker available) and the network's own.
    kafka_errors.KafkaError: Fault.TRANSIENT,
    TimeoutError: Fault.TRANSIENT,
    ConnectionError: Fault.TRANSIENT,
    # Anything else a processor raises.
    BaseException: Fault.POISON,
}


def classify(exc: BaseException) -> Fault:
    """The :class:`Fault` of ``exc``: its most specific class that :data:`FAULTS` names."""
    for cls in type(exc).__mro__:
        fault = FAULTS.get(cls)
        if fault is not None:
            return fault
    return Fault.POISON  # unreachable: BaseException is in the table
