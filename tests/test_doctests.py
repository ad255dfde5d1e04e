"""The docstring examples of the stage packages, run under their installed names.

``collectors/``, ``drift/``, ``triggers/`` and ``dashboards/`` install as
``observer.collectors`` and so on (``pyproject.toml``). pytest's ``--doctest-modules`` would
collect them by path, as ``collectors.x``, and load a second copy of every module (and of its
Prometheus metrics) beside the one the code imports; so their doctests run here, one test per
module, on the modules the code really uses. ``observer/``'s own doctests are collected by pytest.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

STAGE_PACKAGES = ("observer.collectors", "observer.drift", "observer.triggers", "observer.dashboards")


def stage_modules() -> list[str]:
    names = []
    for package in STAGE_PACKAGES:
        root = importlib.import_module(package)
        names.append(package)
        names += [m.name for m in pkgutil.walk_packages(root.__path__, package + ".")
                  if not m.name.endswith("__main__")]
    return sorted(names)


@pytest.mark.parametrize("name", stage_modules())
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
