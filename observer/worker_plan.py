"""Which process of ``observer up --workers N`` runs which consuming stage.

Each stage runs in exactly one process, so everything a stage keeps for itself (its consumer
group's members, its local state file, its metric series) stays as with one process; the
processes meet only at Kafka topics, like the stages. The stages are placed heaviest first,
each on the least loaded process (longest processing time first), by the ``cpu_weight``
their specs declare. Process 0 is the one serving the receivers and the admin API: it
starts with :data:`SHELL_WEIGHT` for them, and keeps every stage whose admin routes need
its processor (``beside_admin``).

>>> from observer.core.stage import StageSpec
>>> def spec(name, weight, beside=False):
...     return StageSpec(name=name, help="h", config_section="kafka", inputs=("spans",),
...                      build=lambda c, t: None, group_id=lambda c: name,
...                      cpu_weight=weight, beside_admin=beside)
>>> specs = [spec("drift", 21), spec("normalize", 26), spec("trigger", 0.5, beside=True)]
>>> plan(specs, 2)  # process 0 starts at SHELL_WEIGHT (16) + 0.5: normalize leaves it
[['drift', 'trigger'], ['normalize']]
>>> plan(specs, 1)
[['drift', 'normalize', 'trigger']]
>>> plan(specs, 5)  # never an empty worker
[['trigger'], ['normalize'], ['drift']]
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from observer.core.stage import StageSpec

SHELL_WEIGHT = 16.0
"""Process 0's own load besides its stages (receivers, admin API, views, settling), in the
units of ``StageSpec.cpu_weight``: percent of ``observer up``'s Python time in one measured
run (docs/benchmarks.md, "Several processes")."""

MAX_AUTO_WORKERS = 4
"""``workers`` left unset, with two cores or more: this many processes (with the stages'
weights as measured, a fifth process would get less than a tenth of the work).

More processes than cores, because the stages also wait (for Kafka's acknowledgements and
commits, and for fsyncs in embedded durable mode) and the stages of one process queue for its
GIL. End to end on 2 cores (docs/benchmarks.md, "Now"): 3,938-4,443 spans/s with 2 processes,
5,177-5,418 with 3, 4,985-5,801 with 4, each pair in the same run; on one core, 1 and 2
processes measured the same (2,757 and 2,606), so one core keeps one process."""


def default_workers() -> int:
    """:data:`MAX_AUTO_WORKERS` processes where this process may run on two cores or more,
    else one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return 1 if cores < 2 else MAX_AUTO_WORKERS


def plan(specs: Sequence[StageSpec], workers: int) -> list[list[str]]:
    """The stages of each process, process 0 first (it always exists, maybe with no stage);
    workers left without a stage are not started. Names keep ``specs``' order."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    order = {s.name: i for i, s in enumerate(specs)}
    loads = [SHELL_WEIGHT] + [0.0] * (workers - 1)
    share: list[list[str]] = [[] for _ in range(workers)]
    for s in specs:
        if s.beside_admin or workers == 1:
            share[0].append(s.name)
            loads[0] += s.cpu_weight
    for s in sorted((s for s in specs if not s.beside_admin and workers > 1),
                    key=lambda s: (-s.cpu_weight, order[s.name])):
        least = min(range(workers), key=lambda i: (loads[i], i))
        share[least].append(s.name)
        loads[least] += s.cpu_weight
    ordered = [sorted(names, key=order.__getitem__) for names in share]
    return [ordered[0]] + [names for names in ordered[1:] if names]
