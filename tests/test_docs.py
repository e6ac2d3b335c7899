"""Documents and docstrings name files relative to the repository: a reader on another machine
has none of this machine's paths."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What a checkout holds that is not ours to check: environments, data, caches, build output.
SKIPPED_DIRS = {".git", ".venv", "var", "node_modules", "artifacts", "mutants", "__pycache__"}
TEXT_SUFFIXES = {".md", ".py", ".sh", ".txt", ".toml", ".cfg", ".ini", ".html", ".js", ".css"}
# Home and workspace directories of one machine (system paths such as /usr/bin are fine).
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|home|Users|root|mnt|srv)/[\w.-]+")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def project_files() -> list[Path]:
    found = []
    for path in ROOT.rglob("*"):
        relative = path.relative_to(ROOT)
        if SKIPPED_DIRS & set(relative.parts) or any(
            p.startswith(".") for p in relative.parts[:-1]
        ):
            continue
        if path.is_file() and (path.suffix in TEXT_SUFFIXES or path.name in {"Makefile", "run"}):
            found.append(path)
    return found


def test_no_document_or_source_names_a_path_of_one_machine() -> None:
    files = project_files()
    assert any(path.name == "benchmarks.md" for path in files)  # the walk finds the documents
    offenders = []
    for path in files:
        if path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            offenders += [
                f"{path.relative_to(ROOT)}:{number}: {m}" for m in MACHINE_PATH.findall(line)
            ]
    assert offenders == []


def test_relative_links_in_documents_resolve() -> None:
    broken = []
    for path in project_files():
        if path.suffix != ".md":
            continue
        for target in MARKDOWN_LINK.findall(path.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert broken == []
