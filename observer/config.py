"""One typed configuration for every stage, composed from the sections each stage declares
beside its code (the kernel's Kafka, TLS, admin and supervisor settings; ``drift``,
``trigger``, the collectors' sections).

Sources, lowest to highest priority: the defaults, a YAML file (``--config observer.yaml`` or
``OBSERVER_CONFIG``), then environment variables with the ``OBSERVER_`` prefix and ``__``
between nesting levels (``OBSERVER_KAFKA__BOOTSTRAP_SERVERS=k1:9092``). Every default works
on one machine with the embedded broker.

>>> cfg = load_config(None, env={})
>>> cfg.kafka.bootstrap_servers  # empty: observer starts its embedded broker
''
>>> cfg.drift.window_size
1000
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from observer.collectors.eval_join.config import EvalJoinConfig
from observer.collectors.gpu.config import GPUConfig
from observer.collectors.kserve.config import KServeConfig
from observer.collectors.metrics.config import MetricsConfig
from observer.collectors.normalize.config import NormalizerConfig
from observer.collectors.paths.config import PathsConfig
from observer.collectors.receiver.config import ReceiverConfig
from observer.core.config import (
    TENANTLESS_RECORD_TYPES,
    AdminConfig,
    ConfigError,
    KafkaConfig,
    SupervisorConfig,
    problems,
    with_tenant,
)
from observer.drift.config import DriftConfig
from observer.triggers.config import TriggerConfig

__all__ = ["ConfigError", "ObserverConfig", "load_config"]


class ObserverConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="OBSERVER_", env_nested_delimiter="__", extra="forbid"
    )

    log_level: str = Field("INFO", description="Python logging level.")
    workers: int | None = Field(
        None, ge=1, le=16,
        description="Processes `observer up` shares the consuming stages between (`--workers`): "
        "1 runs everything in one process; unset, 4 with two cores or more (the stages also "
        "wait on Kafka, so more processes than cores go faster), 1 on one core. Each stage "
        "runs in one of them, placed by its measured CPU share; the first process also runs "
        "the receivers, the admin API and the trigger stage.",
    )
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    receiver: ReceiverConfig = Field(default_factory=ReceiverConfig)
    normalizer: NormalizerConfig = Field(default_factory=NormalizerConfig)
    paths: PathsConfig = Field(default_factory=PathsConfig)
    eval_join: EvalJoinConfig = Field(default_factory=EvalJoinConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    trigger: TriggerConfig = Field(default_factory=TriggerConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    gpu: GPUConfig = Field(default_factory=GPUConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    kserve: KServeConfig = Field(default_factory=KServeConfig)
    supervisor: SupervisorConfig = Field(default_factory=SupervisorConfig)

    @model_validator(mode="after")
    def _tenant_segments(self) -> ObserverConfig:
        # With tenants, one tenant's traffic must never move another's drift or fire its
        # retraining: the tenant leads every segment (and so every Kafka key written by
        # segment), whatever drift.segment_keys says.
        if self.receiver.tenants:
            drift = self.drift
            drift.segment_keys = with_tenant(drift.segment_keys)
            drift.segment_keys_by_record_type = {
                record_type: keys if record_type in TENANTLESS_RECORD_TYPES else with_tenant(keys)
                for record_type, keys in drift.segment_keys_by_record_type.items()
            }
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the YAML file, which arrives as init kwargs.
        return (env_settings, init_settings)


def load_config(path: Path | str | None, env: Mapping[str, str] | None = None) -> ObserverConfig:
    """Load the YAML file at ``path`` (if any) and apply ``OBSERVER_*`` overrides.

    ``env`` replaces ``os.environ`` (for tests); ``OBSERVER_CONFIG`` names the file when
    ``path`` is None.
    """
    environ = os.environ if env is None else env
    path = path or environ.get("OBSERVER_CONFIG") or None
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
    saved = None
    if env is not None:
        # pydantic-settings reads os.environ; swap it for the duration when a test passes env.
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
    try:
        return ObserverConfig(**data)
    except ValidationError as e:
        raise ConfigError(f"invalid configuration: {problems(e)}") from None
    except Exception as e:  # noqa: BLE001 (a settings source that cannot parse a value)
        raise ConfigError(f"invalid configuration: {e}") from None
    finally:
        if saved is not None:
            os.environ.clear()
            os.environ.update(saved)
