"""The documentation: README.md stays short and starts with the set-up commands, every repository path and
``robust_sabn.*`` name it quotes exists, and the training flag table comes from the metadata the CLI reads."""
import argparse
import dataclasses
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

from robust_sabn.cli.flags import add_config_arguments, flag_help
from robust_sabn.training.config import TrainConfig, flag_name

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Top-level folders of the repository: a quoted path starting with one of them must exist. Other paths the
# documentation quotes (runs/, models/, data/, <run>/...) are made by the program, not kept in the repository.
SOURCE_FOLDERS = ("attacks", "bin", "compat", "docs", "eval", "robust_sabn", "tests", "training")
ROOT_FILE_SUFFIXES = (".md", ".py", ".toml", ".txt", ".yml")
SETUP_COMMANDS = ["./bin/setup && .venv/bin/robust-sabn quickstart", "./bin/setup && ./bin/test"]


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def inline_code(page: Path) -> list[str]:
    return re.findall(r"`([^`\n]+)`", prose(page.read_text()))


def repository_path(span: str) -> str | None:
    """The repository path a code span quotes, or None when it quotes none."""
    if any(c in span for c in " <>()=:") or span.startswith((".", "/")):
        return None
    first = span.split("/")[0]
    if ("/" in span and first in SOURCE_FOLDERS) or ("/" not in span and span.endswith(ROOT_FILE_SUFFIXES)):
        return span
    return None


def resolves(name: str) -> bool:
    """Whether a dotted ``robust_sabn.a.b`` name is an importable module or an attribute of one."""
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_quoted_repository_paths_exist(page):
    paths = {span for span in map(repository_path, inline_code(page)) if span}
    missing = sorted(p for p in paths if not (any(ROOT.glob(p)) if "*" in p else (ROOT / p).exists()))
    assert not missing, f"{page.name} quotes paths that are not in the repository: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_quoted_robust_sabn_names_exist(page):
    names = {m.group(0) for span in inline_code(page) if (m := re.match(r"robust_sabn(\.[A-Za-z_]\w*)+", span))}
    assert not [n for n in sorted(names) if not resolves(n)], f"{page.name} quotes names robust_sabn lacks"


def test_readme_links_reach_files():
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", prose((ROOT / "README.md").read_text()))
    local = [t for t in targets if not re.match(r"[a-z]+:", t)]
    assert local, "README.md links to no documentation page"
    assert not [t for t in local if not (ROOT / t).exists()]


def test_readme_is_short_and_starts_with_the_setup_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    first_block = re.search(r"^```bash\n(.*?)^```", text, flags=re.S | re.M).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert commands == SETUP_COMMANDS
    assert text.index("```bash") < text.index("\n## ")  # before any section


def test_no_citation_of_notes_outside_the_repository():
    files = [*PAGES, *(path for folder in SOURCE_FOLDERS for path in (ROOT / folder).rglob("*.py"))]
    assert not [path.name for path in files if "REFERENCE" + ".md" in path.read_text()]  # cite papers instead


def load_hook():
    spec = importlib.util.spec_from_file_location("training_flags", ROOT / "docs" / "hooks" / "training_flags.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_flags_and_docs_table_share_the_field_metadata():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    hook = load_hook()
    table = hook.flag_table()
    helps = flag_help()
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f"TrainConfig.{f.name} has no help metadata"
        assert helps[f.name].startswith(f.metadata["help"])
        action = parser._option_string_actions[flag_name(f.name)]
        assert action.help.replace("%%", "%") == helps[f.name]
        row = next(line for line in table.splitlines() if line.startswith(f"| `{flag_name(f.name)}`"))
        assert hook.markdown_text(helps[f.name]) in row
    assert hook.MARKER in (ROOT / "docs" / "training.md").read_text()
    assert hook.format_default(8 / 255) == "8/255" and hook.format_default([100, 150]) == "100 150"


def test_the_version_is_spelled_in_one_place():
    """robust_sabn/version.py holds it (pyproject.toml and the package read it); no page, source file or setting
    repeats it (CHANGELOG.md's headings record the versions of the past)."""
    from robust_sabn.version import __version__

    files = [*PAGES, *ROOT.glob("*.toml"), *ROOT.glob("*.py"), *ROOT.glob("*.txt"), *ROOT.glob("*.yml"),
             *(path for folder in SOURCE_FOLDERS for path in (ROOT / folder).rglob("*") if path.is_file()
               and path.suffix in (".py", ".md", ".yaml", ".toml") and ".venv" not in path.parts)]
    spelled = sorted(str(path.relative_to(ROOT)) for path in files if __version__ in path.read_text())
    assert spelled == ["robust_sabn/version.py"]
    assert (ROOT / "CHANGELOG.md").read_text().startswith("# Changelog")
    assert (ROOT / "robust_sabn" / "py.typed").exists()
