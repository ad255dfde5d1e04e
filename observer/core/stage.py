"""What a stage is, declared once beside its code: :class:`StageSpec`.

Every stage package holds one ``SPEC`` (``observer.drift.spec``, ``observer.triggers.spec``,
the collectors' ``spec`` modules). The shell's registry (``observer.stages``) lists them,
and everything that used to repeat a stage's facts reads them from there: the runtime
(builds, consumer groups, subscriptions, the settle watermark's graph), the CLI (subcommands
and their help), the admin API (each stage's routes) and the documentation (the stages and
topics table, the topology diagram).

Topics are named by their :class:`~observer.core.topics.Topics` field (``"llm"``, not
``"observer.llm"``), so a spec holds no prefix and :meth:`StageSpec.topic_names` resolves
them for one configuration.

>>> from observer.core.config import KafkaConfig
>>> spec = StageSpec(name="echo", help="copy spans", config_section="kafka",
...                  inputs=("spans",), outputs=("llm",), kind="producer")
>>> spec.summary(Topics.from_config(KafkaConfig()))
'copy spans (otlp_spans -> observer.llm)'
>>> StageSpec(name="x", help="h", config_section="kafka", inputs=("nope",))
Traceback (most recent call last):
...
ValueError: stage 'x': 'nope' is not a topic (observer.core.topics.TOPIC_TABLE)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from observer.core.topics import TOPIC_TABLE, Topics

# The configuration is the shell's ObserverConfig, which the kernel cannot import (the shell
# composes it from the stages' sections): typed loosely here, and precisely in each spec.
Config = Any


class View(Protocol):
    """A topic read into memory (``observer.views.TopicView``): what admin routes read."""

    def latest(self) -> list[Any]: ...

    def history(self) -> list[Any]: ...


@dataclass(frozen=True)
class AdminContext:
    """What a stage's admin routes get from the process serving them.

    ``processor()`` is the stage's running processor here (``None`` when this process does
    not run the stage, or it is restarting); ``topic_view(topic, slot)`` returns a view of a
    topic (resolved name) that the shell starts and stops, one per topic.
    """

    cfg: Config
    topics: Topics
    processor: Callable[[], Any | None]
    topic_view: Callable[[str, Callable[[Any], str]], View | None]


@dataclass(frozen=True)
class StageSpec:
    """One stage's facts. ``kind`` is ``consumer`` (a Kafka consumer group run by the
    runtime) or ``producer`` (writes topics from outside: HTTP, gRPC, NVML...).

    - ``config_section``: the :class:`ObserverConfig` field holding the stage's settings.
    - ``inputs`` / ``outputs``: ``Topics`` fields it may read / writes (dead letters aside);
      ``subscribe(cfg, topics)`` narrows the inputs a configuration reads (default: all).
    - ``reads_back``: topics it reads outside its group, at a restart (its own state).
    - ``sources`` / ``sinks``: what lies outside Kafka at either end (for the diagram).
    - ``build(cfg, topics)``: a consumer's processor; ``group_id(cfg)`` its consumer group;
      ``hold_s(cfg)``: how long input may stay in its memory after its offset is committed.
    - ``admin_routes(ctx)``: a FastAPI ``APIRouter`` the admin API mounts (behind its guard).
    - ``add_arguments(parser)`` / ``command(cfg, args)``: extra CLI arguments; a stage with a
      ``command`` runs on its own (``collect-gpu``), not in ``observer up``.
    - ``cpu_weight``: its share of ``observer up``'s CPU, relative to the others (measured,
      see each spec); ``observer up --workers N`` balances the processes with it.
    - ``beside_admin``: its admin routes need its processor, so ``observer up`` runs it in
      the process serving the admin API, whatever the number of workers.
    """

    name: str
    help: str
    config_section: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    kind: Literal["consumer", "producer"] = "consumer"
    description: str = ""
    reads_back: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    sinks: tuple[str, ...] = ()
    build: Callable[[Config, Topics], Any] | None = None
    group_id: Callable[[Config], str] | None = None
    subscribe: Callable[[Config, Topics], list[str]] | None = None
    hold_s: Callable[[Config], float] = lambda _cfg: 0.0
    admin_routes: Callable[[AdminContext], Any] | None = None
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    command: Callable[[Config, argparse.Namespace], int] | None = None
    cpu_weight: float = 1.0
    beside_admin: bool = False

    def __post_init__(self) -> None:
        for topic in (*self.inputs, *self.outputs, *self.reads_back):
            if topic not in TOPIC_TABLE:
                raise ValueError(f"stage {self.name!r}: {topic!r} is not a topic "
                                 "(observer.core.topics.TOPIC_TABLE)")
        if self.kind == "consumer" and (self.build is None or self.group_id is None
                                        or not self.inputs):
            raise ValueError(f"stage {self.name!r}: a consumer needs build, group_id and inputs")

    @property
    def in_runtime(self) -> bool:
        """Whether ``observer up`` (the runtime) runs it: every stage without a command."""
        return self.command is None

    def topic_names(self, fields: Sequence[str], topics: Topics) -> list[str]:
        """The resolved names of ``Topics`` fields (``"llm"`` -> ``"observer.llm"``)."""
        return [getattr(topics, f) for f in fields]

    def input_topics(self, cfg: Config, topics: Topics) -> list[str]:
        """The topics this configuration makes it read."""
        if self.subscribe is not None:
            return self.subscribe(cfg, topics)
        return self.topic_names(self.inputs, topics)

    def output_topics(self, topics: Topics) -> list[str]:
        """The topics it writes (dead letters aside)."""
        return self.topic_names(self.outputs, topics)

    def summary(self, topics: Topics) -> str:
        """The help line: what it does, and its topics (``in -> out``)."""
        ins = ", ".join([*self.sources, *self.topic_names(self.inputs, topics)]) or "-"
        outs = ", ".join([*self.topic_names(self.outputs, topics), *self.sinks]) or "-"
        return f"{self.help} ({ins} -> {outs})"
