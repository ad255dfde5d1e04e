"""One ``/metrics`` for several processes: their Prometheus expositions merged into one.

With ``observer up --workers N`` every process keeps its own registry; the admin API asks
each worker for its exposition and serves the merge, so a scrape sees one observer. Each
stage runs in one process, so a stage's series come from one place; where several processes
have the same series (a counter every process defines, the client's own ``process_*``
series), values are added: counts and CPU seconds of the whole observer, its total
resident memory. A few are not sums (:data:`NOT_SUMMED`).

>>> a = "# HELP t_total T.\\n# TYPE t_total counter\\nt_total{stage=\\"drift\\"} 3.0\\n"
>>> b = "# HELP t_total T.\\n# TYPE t_total counter\\nt_total{stage=\\"drift\\"} 4.0\\n" \\
...     "t_total{stage=\\"paths\\"} 1.0\\n"
>>> print(merge([a, b]).decode().strip())
# HELP t_total T.
# TYPE t_total counter
t_total{stage="drift"} 7.0
t_total{stage="paths"} 1.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

NOT_SUMMED: tuple[tuple[str, Callable[[float, float], float]], ...] = (
    ("_created", min),                 # when a counter began: the earliest
    ("process_start_time_seconds", min),
    ("process_max_fds", max),          # a limit, not an amount
    ("python_info", max),              # an info series: 1
)
"""Sample names ending with these take this function of the values instead of their sum."""


def _combine(name: str) -> Callable[[float, float], float]:
    for suffix, combine in NOT_SUMMED:
        if name.endswith(suffix):
            return combine
    return lambda x, y: x + y


def merge(texts: Sequence[str]) -> bytes:
    """The Prometheus text exposition of every family in ``texts`` (each one exposition),
    series that appear in several merged (:data:`NOT_SUMMED`, else summed)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            kept = families.setdefault(family.name, family)
            if kept.type != family.type:
                continue  # the same name with another type: keep the first process's
            series = values.setdefault(family.name, {})
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                seen = series.get(key)
                series[key] = s if seen is None else seen._replace(
                    value=_combine(s.name)(seen.value, s.value))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(families, values))  # type: ignore[arg-type]
    return generate_latest(registry)


class _Merged:
    """A collector yielding the merged families (the registry renders them)."""

    def __init__(self, families: dict[str, Metric],
                 values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]]):
        self.families, self.values = families, values

    def collect(self) -> Iterator[Metric]:
        for name, family in self.families.items():
            merged = Metric(family.name, family.documentation, family.type, family.unit)
            merged.samples = list(self.values.get(name, {}).values())
            yield merged
