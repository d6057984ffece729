"""docs/ARCHITECTURE.md stays true: every module, file and function it names exists; app/ modules stay small."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "ARCHITECTURE.md"
CODE = re.compile(r"`([^`]+)`")
MAX_LINES = 300
# File names the page gives (`dashboard.secret`), not code.
DATA_SUFFIXES = {"py", "json", "jsonc", "secret", "sqlite3"}


def named() -> set[str]:
    """Return what the page puts in backticks."""
    return set(CODE.findall(DOC.read_text(encoding="utf-8")))


def paths() -> list[str]:
    """Return the repository paths the page names (app/…, tests/…, docs/…)."""
    return sorted(n for n in named() if re.fullmatch(r"(app|tests|docs)/[\w./]*", n))


def module_files() -> list[str]:
    """Return the bare module names the page names (`chat.py`), which must exist somewhere under app/."""
    return sorted(n for n in named() if re.fullmatch(r"\w+\.py", n))


def dotted() -> list[str]:
    """Return the code references the page names, like `session_rules.apply_session` (calls stripped).

    Only references that start with one of app's modules count; `flask.g` or a file like `providers.json` do not.
    """
    modules = {p.stem for p in (ROOT / "app").rglob("*.py")} | {p.name for p in (ROOT / "app").iterdir() if p.is_dir()}
    refs = set()
    for text in named():
        for part in re.split(r"[\s,]+", text):
            part = re.sub(r"\(.*\)$", "", part)
            if not re.fullmatch(r"[a-z_]+(\.[A-Za-z_]+)+", part) or part.split(".")[0] not in modules:
                continue
            if part.rsplit(".", 1)[1] not in DATA_SUFFIXES:
                refs.add(part)
    return sorted(refs)


def resolve(reference: str) -> object:
    """Import the longest module prefix of reference under app (at any depth), then follow the attributes."""
    parts = reference.split(".")
    packages = ["app", *(f"app.{p.parent.name}" for p in (ROOT / "app").glob("*/__init__.py"))]
    for cut in range(len(parts), 0, -1):
        for package in packages:
            name = ".".join([package, *parts[:cut]])
            try:
                target = importlib.import_module(name)
            except ModuleNotFoundError:
                continue
            for attribute in parts[cut:]:
                target = getattr(target, attribute)
            return target
    raise LookupError(reference)


def test_architecture_page_names_only_paths_that_exist():
    assert paths(), "the page names no paths: the pattern above no longer finds them"
    missing = [p for p in paths() if not (ROOT / p).exists()]
    assert not missing, f"docs/ARCHITECTURE.md names paths that do not exist: {missing}"


def test_architecture_page_names_only_modules_that_exist():
    present = {p.name for p in (ROOT / "app").rglob("*.py")}
    missing = [m for m in module_files() if m not in present]
    assert module_files() and not missing, f"docs/ARCHITECTURE.md names modules that do not exist: {missing}"


@pytest.mark.parametrize("reference", dotted())
def test_architecture_page_names_only_code_that_exists(reference):
    try:
        resolve(reference)
    except (LookupError, AttributeError) as exc:
        pytest.fail(f"docs/ARCHITECTURE.md names {reference!r}, which does not resolve: {exc}")


def test_app_modules_over_300_lines_say_why():
    # A module that grows past the limit has a second job to split off, or says on its second line why not.
    for path in sorted((ROOT / "app").rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) > MAX_LINES:
            assert len(lines) > 1 and lines[1].startswith("# Over 300 lines:"), f"{path.relative_to(ROOT)}"
