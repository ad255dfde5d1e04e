"""The documentation's reference pages, generated from the code at build time.

Run by ``mkdocs build`` through the ``gen-files`` plugin (``mkdocs.yml``), so nothing generated
is committed and the pages always say what the code says:

- ``reference/configuration.md``: every knob of :class:`observer.config.ObserverConfig`
  (dotted name, type, default, environment variable, the ``Field`` description). A knob
  without a description stops the build, naming it.
- ``reference/metrics.md``: every ``observer_*`` Prometheus family the packages register.
- ``reference/cli.md``: ``--help`` of ``observer`` and every subcommand, from argparse.
- ``reference/records.md``: every record schema of :mod:`observer.core.records` and the Kafka
  topic table of :mod:`observer.core.topics`.
- ``reference/stages.md``: every stage's spec (:mod:`observer.stages`): what it reads and
  writes, its consumer group and section, which stages write and read each topic, and the
  topology as a Mermaid diagram.

``python docs/gen_reference.py DIR`` writes the same pages into DIR (to read them without
building the site).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
import types
import typing
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # mkdocs runs this file by path, from any working directory
    sys.path.insert(0, str(ROOT))

from pydantic import BaseModel, SecretStr  # noqa: E402
from pydantic.fields import FieldInfo  # noqa: E402
from pydantic_core import PydanticUndefined  # noqa: E402

# Packages whose modules define metrics: each is imported so its module-level series register.
# The stage folders are mapped into observer (package-dir), so walking observer's own folder
# does not reach them: each is walked from its own.
METRIC_PACKAGES = ("observer", "observer.collectors", "observer.drift", "observer.triggers",
                   "observer.dashboards")
ENV_PREFIX = "OBSERVER_"


class MissingDescriptions(RuntimeError):
    """Knobs without a ``Field(description=...)``: the reference would have a hole."""


# ---------------------------------------------------------------- configuration reference


@dataclass(frozen=True)
class Knob:
    path: str  # dotted; "[]" marks the items of a list, "<key>" the values of a mapping
    type: str
    default: str
    env: str  # "" where no single variable sets it (inside a list or a mapping)
    description: str


def type_name(annotation: Any) -> str:
    """A short, readable name for a field's annotation.

    >>> type_name(dict[str, list[int]]), type_name(typing.Literal["a", "b"] | None)
    ('dict[str, list[int]]', '"a" | "b" | None')
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in args)}]"
    if annotation is typing.Any:
        return "Any"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: FieldInfo) -> str:
    """The default as it would be written in YAML (JSON), secrets never shown."""
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, SecretStr):
        return "(secret)"
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, list | dict):
        from pydantic import TypeAdapter

        value = TypeAdapter(type(value)).dump_python(value, mode="json")
    if isinstance(value, Path):
        value = str(value)
    return json.dumps(value, default=str)


def _models_in(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """(suffix, model) when the annotation holds models: ``[]`` for a list of them,
    ``.<key>[]`` for a mapping of lists of them (``drift.features``), ``.<key>`` for a
    mapping of them."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "", annotation
    if origin is list and args:
        inner = _models_in(args[0])
        return None if inner is None else ("[]" + inner[0], inner[1])
    if origin is dict and len(args) == 2:
        inner = _models_in(args[1])
        return None if inner is None else (".<key>" + inner[0], inner[1])
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is not type(None) and (inner := _models_in(arg)) is not None:
                return inner
    return None


def config_knobs(model: type[BaseModel], prefix: str = "", env: str = ENV_PREFIX) -> Iterator[Knob]:
    """Every knob under ``model``, depth first, in declaration order. A plain section (a
    model-valued field without a description of its own) is not a knob; its fields are.

    >>> from observer.config import ObserverConfig
    >>> knobs = {k.path: k for k in config_knobs(ObserverConfig)}
    >>> knobs["drift.window_size"].env, knobs["drift.window_size"].default
    ('OBSERVER_DRIFT__WINDOW_SIZE', '1000')
    """
    for name, field in model.model_fields.items():
        path, var = f"{prefix}{name}", f"{env}{name.upper()}" if env else ""
        nested = _models_in(field.annotation)
        section = nested is not None and nested[0] == "" and not field.description
        if not section:
            yield Knob(path, type_name(field.annotation), default_text(field), var,
                       " ".join((field.description or "").split()))
        if nested is not None:
            suffix, inner = nested
            inner_env = f"{var}__" if var and suffix == "" else ""
            yield from config_knobs(inner, f"{path}{suffix}.", inner_env)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    # Python-Markdown's tables leave pipes inside code spans alone (escaping them would show
    # the backslash); backticks inside a code span would end it: a double-backtick span
    # takes one.
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text.replace(chr(10), ' ')}{pad}{fence}"


def _section_module(model: type[BaseModel], section: str) -> str:
    """The module declaring section ``section`` of ``model`` ("" for a plain knob).

    >>> from observer.config import ObserverConfig
    >>> _section_module(ObserverConfig, "drift"), _section_module(ObserverConfig, "log_level")
    ('observer.drift.config', '')
    """
    field = model.model_fields.get(section)
    annotation = field.annotation if field is not None else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.__module__
    return ""


def configuration_page(model: type[BaseModel] | None = None) -> str:
    """The page for ``model`` (default: ``ObserverConfig``); raises
    :class:`MissingDescriptions` naming every knob without a description."""
    if model is None:
        from observer.config import ObserverConfig as model

    knobs = list(config_knobs(model))
    missing = [k.path for k in knobs if not k.description]
    if missing:
        raise MissingDescriptions(
            "configuration knobs without Field(description=...): " + ", ".join(missing)
        )
    out = [
        "# Configuration reference",
        "",
        "Generated from `ObserverConfig` (`observer/config.py`, composed from the section "
        "each stage declares beside its code) when the site is built: every knob, its "
        "type and default, the environment variable that sets it, and its description. "
        "Sources, from lowest to highest priority: these defaults, the YAML file (`--config` "
        "or `OBSERVER_CONFIG`), then `OBSERVER_*` variables (`__` between levels). How the "
        "pieces fit together is in [Configuration](../configuration.md).",
        "",
        "Under each knob: the environment variable that sets it. `[]` stands for every item "
        "of a list and `<key>` for every key of a mapping: such knobs are set in the YAML "
        "file, or with the variable of the enclosing list or mapping as JSON. Secrets show as "
        "`(secret)` or `unset`, never their value.",
    ]
    section = None
    for knob in knobs:
        top = knob.path.split(".")[0] if "." in knob.path else "(top level)"
        if top != section:
            section = top
            out += ["", f"## {section}", ""]
            declared = _section_module(model, section)
            if declared:
                out += [f"Declared in `{declared}`.", ""]
            out += ["| knob | default | type and description |", "|---|---|---|"]
        # The environment variable under the name: five columns do not fit the page.
        env = f"<br><small>{_code(knob.env)}</small>" if knob.env else ""
        out.append(f"| {_code(knob.path)}{env} | {_code(knob.default)} "
                   f"| {_code(knob.type)}<br>{_cell(knob.description)} |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- metric list


@dataclass(frozen=True)
class MetricInfo:
    name: str
    type: str
    help: str
    labels: tuple[str, ...]
    module: str
    endpoint: str


def _import_all(packages: tuple[str, ...], on_import: Callable[[str], None]) -> list[str]:
    """Import every module of ``packages`` (``__main__`` modules excepted: importing one runs
    it); ``on_import(name)`` after each. Returns the modules that failed, with a warning each:
    an optional dependency missing must not hide every other metric."""
    failed = []
    for package in packages:
        root = importlib.import_module(package)
        on_import(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}.", onerror=failed.append):
            if info.name.rsplit(".", 1)[-1] == "__main__":
                continue
            try:
                importlib.import_module(info.name)
            except Exception as e:  # noqa: BLE001 (reported, the rest goes on)
                warnings.warn(f"metric list: {info.name} not imported: {e}", stacklevel=2)
                failed.append(info.name)
                continue
            on_import(info.name)
    return failed


def _families(collector: Any) -> Iterator[tuple[str, str, str, tuple[str, ...]]]:
    """(name, type, help, labels) of a collector: a metric wrapper (Counter...) knows its
    label names; a custom collector's families carry them when it built them with labels."""
    labels = tuple(getattr(collector, "_labelnames", ()))
    describe = getattr(collector, "describe", None)
    families = describe() if describe is not None and labels else collector.collect()
    for family in families:
        family_labels = labels or tuple(getattr(family, "_labelnames", ()) or ())
        yield family.name, family.type, family.documentation, family_labels


def _defining_module(name: str, imported: str) -> str:
    """The module whose source names the metric; ``imported`` (the module whose import
    registered it, perhaps through its own imports) when none of ours does."""
    for module_name, module in sorted(sys.modules.items()):
        if module_name.split(".")[0] not in METRIC_PACKAGES:
            continue
        source = getattr(module, "__file__", None)
        if source and source.endswith(".py") and f'"{name}' in Path(source).read_text():
            return module_name
    return imported


def exposed_name(name: str, kind: str) -> str:
    """The sample name a scrape shows: counters end in ``_total``.

    >>> exposed_name("observer_stage_messages", "counter"), exposed_name("g", "gauge")
    ('observer_stage_messages_total', 'g')
    """
    return f"{name}_total" if kind == "counter" else name


def collect_metrics() -> list[MetricInfo]:
    """Every ``observer_*`` family: the default registry (the admin API's ``/metrics``),
    attributed to the module whose import registered it, plus the families registered per
    registry at run time: the domain series and the GPU collector's."""
    from prometheus_client import REGISTRY, CollectorRegistry

    seen: set[int] = set()
    found: dict[str, MetricInfo] = {}

    def take(registry: CollectorRegistry, module: str, endpoint: str) -> None:
        for collector in list(registry._collector_to_names):  # noqa: SLF001 (no public walk)
            if id(collector) in seen:
                continue
            seen.add(id(collector))
            for name, kind, help_text, labels in _families(collector):
                if name.startswith("observer_"):
                    found.setdefault(
                        name, MetricInfo(exposed_name(name, kind), kind, help_text, labels,
                                         _defining_module(name, module), endpoint))

    take(REGISTRY, "(before import)", "admin")
    _import_all(METRIC_PACKAGES, lambda module: take(REGISTRY, module, "admin"))

    from observer.collectors.metrics.domain_metrics import DomainSeries
    from observer.collectors.gpu.metrics import GPUMetrics

    domain = CollectorRegistry()
    DomainSeries.create(domain)
    take(domain, "observer.collectors.metrics.domain_metrics", "admin (metrics stage)")
    gpu = CollectorRegistry()
    gpu.register(GPUMetrics())
    take(gpu, "observer.collectors.gpu.metrics", "collect-gpu")
    return sorted(found.values(), key=lambda m: m.name)


def metrics_page() -> str:
    metrics = collect_metrics()
    out = [
        "# Metric reference",
        "",
        "Generated when the site is built by importing every module of "
        f"{', '.join(f'`{p}`' for p in METRIC_PACKAGES)} and reading the Prometheus "
        "registries: each family's exposed name, type, help text and labels, and the module "
        "that defines it. `admin`: `/metrics` on the admin port of any observer process "
        "(`admin (metrics stage)`: where the `metrics` stage runs); `collect-gpu`: the GPU "
        "collector's `/metrics`. Histograms expose `_bucket`, `_sum` and `_count` series. "
        f"{len(metrics)} families. What they mean in context: "
        "[metrics stage](../stages/metrics.md).",
        "",
        "| metric | type | labels | help | module | served by |",
        "|---|---|---|---|---|---|",
    ]
    for m in metrics:
        labels = ", ".join(f"`{label}`" for label in m.labels) or "-"
        out.append(f"| `{m.name}` | {m.type} | {labels} | {_cell(m.help)} | `{m.module}` "
                   f"| {m.endpoint} |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- CLI reference


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:  # noqa: SLF001 (argparse has no public walk)
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            yield from action.choices.items()


def cli_page() -> str:
    from observer.cli import _parser

    os.environ["COLUMNS"] = "100"  # argparse wraps help to the terminal: fix it
    out = [
        "# CLI reference",
        "",
        "Generated from the argparse parser of `observer/cli.py` when the site is built: the "
        "`--help` of `observer` and of every subcommand. Every command takes the global "
        "`--config FILE` before the subcommand (`observer --config observer.yaml up`).",
    ]

    def walk(parser: argparse.ArgumentParser, depth: int) -> None:
        title = parser.prog
        out.extend(["", f"{'#' * min(depth, 4)} `{title}`", "", "```text",
                    parser.format_help().rstrip(), "```"])
        for _, child in _subcommands(parser):
            walk(child, depth + 1)

    walk(_parser(), 2)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- record schemas


def record_classes() -> list[type[BaseModel]]:
    """Every ``Record`` subclass defined in :mod:`observer.core.records`, in source order."""
    from observer.core import records

    return [obj for obj in vars(records).values()
            if isinstance(obj, type) and issubclass(obj, records.Record)
            and obj is not records.Record and obj.__module__ == records.__name__]


# Constraint metadata of a pydantic field -> how the record reference writes it.
BOUNDS = {"ge": ">= {}", "gt": "> {}", "le": "<= {}", "lt": "< {}", "min_length": "length >= {}",
          "max_length": "length <= {}"}


def bounds_text(field: FieldInfo) -> str:
    """The bounds a decoded value must meet (the records' ``Count``, ``Millis``...).

    >>> from pydantic import Field
    >>> bounds_text(Field(0.0, ge=0, le=10, allow_inf_nan=False))
    '>= 0, <= 10, finite'
    """
    parts = []
    for item in field.metadata:
        for attr, form in BOUNDS.items():
            if getattr(item, attr, None) is not None:
                parts.append(form.format(getattr(item, attr)))
        if getattr(item, "allow_inf_nan", None) is False:
            parts.append("finite")
    return ", ".join(parts)


def records_page() -> str:
    from observer.core import records
    from observer.core.topics import TOPIC_TABLE

    out = [
        "# Record schemas and topics",
        "",
        "Generated from `observer/core/records.py` and `observer/core/topics.py` when the site "
        "is built. Every record is a JSON object whose `schema` field names its type and "
        "version; a message whose `schema` is unknown, or whose fields break their types or "
        "bounds, does not decode (it goes to the dead-letter topic). What the fields mean: "
        "[Topics and records](../records.md).",
        "",
        "## Topics",
        "",
        "`observer.*` names take `kafka.topic_prefix` (default `observer.`), `otlp_*` names "
        "`kafka.otlp_topic_prefix` (default empty: the OpenTelemetry Collector kafka "
        "exporter's names).",
        "",
        "| default name | key | value | field of `Topics` | prefix | compacted |",
        "|---|---|---|---|---|---|",
    ]
    for field, spec in TOPIC_TABLE.items():
        prefix = "kafka.topic_prefix" if spec.prefixed else "kafka.otlp_topic_prefix"
        default = ("observer." if spec.prefixed else "") + spec.suffix
        out.append(f"| `{default}` | {_cell(spec.key)} | {_cell(spec.value)} | `{field}` | `{prefix}` "
                   f"| {'yes' if spec.compacted else 'no'} |")
    classes = record_classes()
    registered = set(records.RECORD_TYPES.values())
    out += ["", "## Records", "", "| schema | class | decoded from topics |", "|---|---|---|"]
    for cls in classes:
        out.append(f"| `{cls.schema_id}` | `{cls.__name__}` | "
                   f"{'yes' if cls in registered else 'no (not in RECORD_TYPES)'} |")
    for cls in classes:
        doc = " ".join((cls.__doc__ or "").split())
        out += ["", f"### `{cls.schema_id}`", "", f"`{records.__name__}.{cls.__name__}`"
                + (f": {doc}" if doc else ""), "",
                "| field | type | default | bounds | description |", "|---|---|---|---|---|"]
        for name, field in cls.model_fields.items():
            shown = field.alias or name
            default = default_text(field)
            out.append(f"| `{shown}` | {_code(type_name(field.annotation))} | {_code(default)} "
                       f"| {bounds_text(field)} "
                       f"| {_cell(' '.join((field.description or '').split()))} |")
        schema = json.dumps(cls.model_json_schema(by_alias=True), indent=2)
        out += ["", '??? note "JSON schema"', "", "    ```json",
                *(f"    {line}" for line in schema.splitlines()), "    ```"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- stages and topics


def _node(prefix: str, name: str) -> str:
    """A Mermaid node id (letters, digits, underscores) for a stage, topic or endpoint.

    >>> _node("t", "observer.drift-state"), _node("x", "/metrics")
    ('t_observer_drift_state', 'x__metrics')
    """
    return prefix + "_" + "".join(c if c.isalnum() else "_" for c in name)


def topology(stages: Any, topics: Any, cfg: Any) -> list[str]:
    """The Mermaid flowchart of ``stages`` (their specs): external sources and sinks,
    stages, and the topics between them; a dotted edge is an input a configuration may add
    (drift reads a record type's topic once it has features)."""
    lines = ["flowchart LR"]
    declared: dict[str, str] = {}

    def node(prefix: str, name: str, shape: str) -> str:
        ident = _node(prefix, name)
        if ident not in declared:
            declared[ident] = f"    {ident}{shape.format(json.dumps(name))}"
            lines.append(declared[ident])
        return ident

    edges = []
    for spec in stages:
        stage = node("s", spec.name, "({})")
        read = set(spec.input_topics(cfg, topics))
        for source in spec.sources:
            edges.append(f"    {node('x', source, '[/{}/]')} --> {stage}")
        for topic in spec.topic_names(spec.inputs, topics):
            arrow = "-->" if topic in read else "-.->"
            edges.append(f"    {node('t', topic, '[({})]')} {arrow} {stage}")
        for topic in spec.output_topics(topics):
            edges.append(f"    {stage} --> {node('t', topic, '[({})]')}")
        for sink in spec.sinks:
            edges.append(f"    {stage} --> {node('x', sink, '[/{}/]')}")
    return lines + edges


def stages_page() -> str:
    from observer.config import ObserverConfig
    from observer.core.topics import TOPIC_TABLE, Topics
    from observer.stages import STAGES

    cfg = ObserverConfig()
    topics = Topics.from_config(cfg.kafka)

    def names(fields: Any) -> str:
        return ", ".join(f"`{n}`" for n in fields) or "-"

    out = [
        "# Stages and topics",
        "",
        "Generated from each stage's spec (`StageSpec`, declared beside its code and listed in "
        "`observer/stages.py`) when the site is built: the runtime, the CLI and the admin API "
        "read the same specs. Topic names are the defaults (`kafka.topic_prefix` "
        "`observer.`); dead letters, which every consuming stage may write, are left out.",
        "",
        "## Topology",
        "",
        "Rounded boxes are stages, cylinders topics, slanted boxes what lies outside Kafka. "
        "A dotted arrow is an input the default configuration does not read.",
        "",
        "```mermaid",
        *topology(STAGES, topics, cfg),
        "```",
        "",
        "## Stages",
        "",
        "| stage | kind | reads | writes | consumer group | section | what it does |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in STAGES:
        reads = names([*spec.sources, *spec.topic_names(spec.inputs, topics)])
        if spec.subscribe is not None:
            reads += " (by default " + names(spec.input_topics(cfg, topics)) + ")"
        writes = names([*spec.output_topics(topics), *spec.sinks])
        group = f"`{spec.group_id(cfg)}`" if spec.group_id is not None else "-"
        command = "" if spec.in_runtime else " Runs on its own, not in `observer up`."
        out.append(f"| `{spec.name}` | {spec.kind} | {reads} | {writes} | {group} "
                   f"| `{spec.config_section}` | {_cell(spec.help)}. "
                   f"{_cell(spec.description)}{command} |")
    out += ["", "## Topics", "", "| topic | written by | read by |", "|---|---|---|"]
    for field in TOPIC_TABLE:
        name = getattr(topics, field)
        writers = [s.name for s in STAGES if field in s.outputs]
        readers = [s.name for s in STAGES if field in s.inputs]
        readers += [f"{s.name} (at a restart)" for s in STAGES if field in s.reads_back]
        if field == "dead_letter":
            writers = ["every consuming stage"]
        out.append(f"| `{name}` | {', '.join(writers) or '-'} | {', '.join(readers) or '-'} |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- entry points

PAGES: dict[str, Callable[[], str]] = {
    "reference/configuration.md": configuration_page,
    "reference/metrics.md": metrics_page,
    "reference/cli.md": cli_page,
    "reference/records.md": records_page,
    "reference/stages.md": stages_page,
}


def write_pages(open_file: Callable[[str], Any]) -> None:
    for path, build in PAGES.items():
        text = build()
        with open_file(path) as f:
            f.write(text)


def _under_mkdocs() -> bool:
    return __name__ != "__main__" and "mkdocs_gen_files" in sys.modules


if _under_mkdocs():
    import mkdocs_gen_files

    try:
        write_pages(lambda path: mkdocs_gen_files.open(path, "w"))
    except MissingDescriptions as e:
        raise SystemExit(f"docs/gen_reference.py: {e}") from None  # one line, no traceback
elif __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "site-reference")
    write_pages(lambda path: (target / path).parent.mkdir(parents=True, exist_ok=True)
                or open(target / path, "w"))
    print(f"wrote {', '.join(PAGES)} under {target}")
