"""What the deployment files may refer to, read from the project itself: the CLI's commands,
the configuration's fields, the routes each command serves. Used by tests/test_deploy_*.py."""

from __future__ import annotations

import argparse
import threading

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from observer.config import ObserverConfig, load_config

ENV_PREFIX = "OBSERVER_"
# Read by the shell itself rather than the settings model.
SPECIAL_ENV = {"OBSERVER_CONFIG"}


def cli_commands() -> set[str]:
    """The ``observer`` subcommands, from the real parser."""
    from observer.cli import _parser

    parser = _parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices)


def env_field_problem(name: str) -> str | None:
    """None when ``OBSERVER_A__B`` names a configuration field, else what is wrong.

    >>> env_field_problem("OBSERVER_KAFKA__BOOTSTRAP_SERVERS") is None
    True
    >>> env_field_problem("OBSERVER_KAFKA__BOOTSTRAP_SERVER")
    "OBSERVER_KAFKA__BOOTSTRAP_SERVER: no field 'bootstrap_server' in kafka"
    """
    if name in SPECIAL_ENV:
        return None
    if not name.startswith(ENV_PREFIX):
        return f"{name}: not an {ENV_PREFIX}* variable"
    model: type[BaseModel] = ObserverConfig
    path = name[len(ENV_PREFIX):].lower().split("__")
    for i, part in enumerate(path):
        field = model.model_fields.get(part)
        if field is None:
            where = ".".join(path[:i]) or "the top level"
            return f"{name}: no field {part!r} in {where}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
            continue
        # A leaf; a dict-typed knob (client_options...) may take one more key level.
        if i != len(path) - 1 and not (i == len(path) - 2 and "dict" in str(ann)):
            return f"{name}: {'.'.join(path[:i + 1])} is not a section"
        return None
    return f"{name}: names a section, not a knob"


def load_with_env(env: dict[str, str]) -> ObserverConfig:
    """The configuration these variables give (raises ConfigError with the bad field)."""
    return load_config(None, env={k: v for k, v in env.items() if k not in SPECIAL_ENV})


def admin_routes() -> set[str]:
    """Paths the stages' admin API serves."""
    from observer.admin import create_admin_app
    from observer.core.stage import AdminContext
    from observer.core.topics import Topics
    from observer.stages import admin_routers

    cfg = ObserverConfig()
    # Routes only: no processor, no views (nothing is read).
    context = AdminContext(cfg, Topics.from_config(cfg.kafka), processor=lambda: None,
                           topic_view=lambda topic, slot: None)
    app = create_admin_app(cfg.admin, kafka_ready=lambda: True, stage_errors=dict,
                           routers=admin_routers(lambda spec: context))
    return route_paths(app.routes)


def route_paths(routes: list) -> set[str]:
    """The paths of ``routes``, those of included routers too (FastAPI keeps an included
    router as one entry that holds its routes)."""
    paths: set[str] = set()
    for route in routes:
        included = getattr(route, "original_router", None)
        paths |= route_paths(included.routes) if included is not None else {route.path}
    return paths


def gpu_collector_routes() -> set[str]:
    """Paths ``observer collect-gpu`` serves."""
    from observer.collectors.gpu.run import metrics_app

    return {r.path for r in metrics_app(CollectorRegistry(), threading.Event()).routes}


def routes_for(command: str) -> set[str]:
    return gpu_collector_routes() if command == "collect-gpu" else admin_routes()

