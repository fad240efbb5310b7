"""robust-sabn's import hooks: ``import autoattack`` and RobustBench's exported-model loading work in every process.

The installed package puts ``robust_sabn_hooks.pth`` in site-packages (``setup.py``); its one line calls
:func:`startup` when the interpreter starts, and ``import robust_sabn`` calls :func:`install` again (idempotent).
Two finders go on ``sys.meta_path``; nothing else changes:

- last: ``import autoattack`` gets robust-sabn's adapter over PyPI's ``pyautoattack``
  (``robust_sabn/_autoattack``, loaded from its file without importing ``robust_sabn``), only when every other
  finder failed (an installed upstream autoattack wins) and pyautoattack is installed;
- first: right after RobustBench's own loader has run ``robustbench.model_zoo`` (or ``robustbench.utils``), the
  function of that name in :data:`AFTER_IMPORT` registers robust-sabn's exports (or wraps ``load_model``). It
  lives in ``robust_sabn.exporting.robustbench``, imported then, when RobustBench has imported torch already.
  A failing callback warns; it never breaks the import of RobustBench.

Standard library only, and nothing imported before it is needed: this module runs at every interpreter start-up.
``ROBUST_SABN_NO_HOOKS=1`` keeps :func:`startup` from installing anything.
"""
import os
import sys

DISABLE_VARIABLE = "ROBUST_SABN_NO_HOOKS"
# RobustBench's module -> the function of robust_sabn.exporting.robustbench called with it once it has run
AFTER_IMPORT = {"robustbench.model_zoo": "register_model_dirs", "robustbench.utils": "wrap_load_model"}


class AutoAttackFinder:
    """Serves ``autoattack`` from robust-sabn's adapter; placed last, so it answers only what no one else does."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "autoattack":
            return None
        import importlib.util

        package = importlib.util.find_spec("robust_sabn")  # finds the folder; runs nothing
        if package is None or not package.submodule_search_locations or \
                importlib.util.find_spec("pyautoattack") is None:
            return None
        adapter = os.path.join(package.submodule_search_locations[0], "_autoattack")
        return importlib.util.spec_from_file_location(fullname, os.path.join(adapter, "__init__.py"),
                                                      submodule_search_locations=[adapter])


class AfterImportFinder:
    """Lets the other finders find a module of :data:`AFTER_IMPORT`, and wraps the loader they return."""

    def find_spec(self, fullname, path=None, target=None):
        callback = AFTER_IMPORT.get(fullname)
        if callback is None:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self or not hasattr(finder, "find_spec") else \
                finder.find_spec(fullname, path, target)
            if spec is not None:
                if hasattr(spec.loader, "exec_module"):
                    spec.loader = CallbackLoader(spec.loader, callback)
                return spec
        return None


class CallbackLoader:
    """The original loader, then the callback on the module it executed."""

    def __init__(self, loader, callback: str) -> None:
        self.loader = loader
        self.callback = callback

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        run_callback(self.callback, module)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


def run_callback(name: str, module) -> None:
    """Call ``robust_sabn.exporting.robustbench.<name>(module)``; a failure warns and goes no further."""
    try:
        from robust_sabn.exporting import robustbench

        getattr(robustbench, name)(module)
    except Exception as err:  # noqa: BLE001 -- never break the user's import of RobustBench
        import warnings

        warnings.warn(f"robust-sabn could not register its exported models with RobustBench: {err}", stacklevel=2)


def install() -> None:
    """Put the RobustBench finder first and the autoattack finder last on ``sys.meta_path`` (idempotent); for
    RobustBench modules imported before, run the callbacks now."""
    if not any(isinstance(finder, AfterImportFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, AfterImportFinder())
        for name, callback in AFTER_IMPORT.items():
            if name in sys.modules:
                run_callback(callback, sys.modules[name])
    if not any(isinstance(finder, AutoAttackFinder) for finder in sys.meta_path):
        sys.meta_path.append(AutoAttackFinder())


def disabled() -> bool:
    """Whether ``ROBUST_SABN_NO_HOOKS`` is set (to anything but 0): then :func:`startup` installs nothing."""
    return os.environ.get(DISABLE_VARIABLE, "0") not in ("", "0")


def startup() -> None:
    """What the .pth runs at interpreter start-up: :func:`install`, unless :func:`disabled`."""
    if not disabled():
        install()
