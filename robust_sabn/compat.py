"""Supplies the module ``autoattack`` when no real one is installed.

RobustBench imports ``autoattack`` (upstream fra31/auto-attack, which is not on PyPI); PyPI ships the same attacks
as ``pyautoattack`` with another API. :func:`install` appends an import finder to the END of ``sys.meta_path``:
it answers ``import autoattack`` with robust-sabn's adapter (``robust_sabn/_autoattack``) only after every other
finder has failed, so an installed upstream ``autoattack`` always wins. ``import robust_sabn`` installs it, so
a plain ``pip install robust-sabn`` is enough for ``robustbench.utils.load_model`` and ``robustbench.eval``.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

ADAPTER = Path(__file__).with_name("_autoattack")


class _AutoAttackFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "autoattack" or importlib.util.find_spec("pyautoattack") is None:
            return None
        return importlib.util.spec_from_file_location(fullname, ADAPTER / "__init__.py",
                                                      submodule_search_locations=[str(ADAPTER)])


def install() -> None:
    """Put the finder last on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(finder, _AutoAttackFinder) for finder in sys.meta_path):
        sys.meta_path.append(_AutoAttackFinder())
