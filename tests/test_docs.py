"""The README and docs/ name only what exists: make targets, initlab commands, linked files."""

from __future__ import annotations

import re

from conftest import REPO

DOCS = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]


def _make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M))


def _initlab_commands() -> set[str]:
    from typer.main import get_command

    from initlab.cli import app

    group = get_command(app)
    names = set(group.commands)
    for name, command in group.commands.items():  # sub-groups: `initlab server start`
        names |= {f"{name} {sub}" for sub in getattr(command, "commands", {})}
    return names


def test_every_make_target_the_docs_show_exists():
    targets, seen = _make_targets(), 0
    for doc in DOCS:
        for target in re.findall(r"`make ([\w-]+)", doc.read_text()):
            assert target in targets, f"{doc.name}: `make {target}` is no target of the Makefile"
            seen += 1
    assert seen >= 5


def test_every_initlab_command_the_docs_show_exists():
    commands, seen = _initlab_commands(), 0
    for doc in DOCS:
        for words in re.findall(r"`initlab ([a-z][\w -]*)", doc.read_text()):
            parts = words.split()
            name = " ".join(parts[:2]) if parts[0] == "server" and len(parts) > 1 else parts[0]
            assert name in commands, f"{doc.name}: `initlab {words}` names no command"
            seen += 1
    assert seen >= 5


def test_every_linked_file_exists():
    seen = 0
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links {target}, which does not exist"
            seen += 1
    assert seen >= 8
