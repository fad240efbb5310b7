"""The one build step pyproject.toml cannot declare: ``robust_sabn_hooks.pth`` at the root of site-packages.

Its line runs at every interpreter start-up and installs robust-sabn's import hooks (``_robust_sabn_hooks.py``;
docs/setup.md says what they change). It ships in the wheel and in editable installs, so pip records it and
``pip uninstall`` removes it. Its name sorts after setuptools' ``__editable__.*.pth``, whose finder must be in place
for an editable install's ``import _robust_sabn_hooks``.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "robust_sabn_hooks.pth"
PTH_LINE = "import _robust_sabn_hooks; _robust_sabn_hooks.startup()\n"


class BuildPyWithHooks(build_py):
    """build_py, plus the .pth: into ``build_lib`` for a wheel. An editable install (setuptools >= 64) puts only
    its own finder in the wheel, but everything under ``install_lib``, then the unpacked editable wheel, too."""

    def run(self) -> None:
        super().run()
        folder = Path(self.get_finalized_command("install").install_lib if self.editable_mode else self.build_lib)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / PTH_NAME).write_text(PTH_LINE)


setup(cmdclass={"build_py": BuildPyWithHooks})
