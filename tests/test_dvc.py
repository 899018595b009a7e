"""dvc.yaml says what each stage reads: its code deps are exactly the modules its command imports."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from conftest import REPO

PACKAGE = REPO / "src" / "initlab"


def _exists(module: str) -> bool:
    parts = module.split(".")[1:]
    return (
        PACKAGE.joinpath(*parts).with_suffix(".py").exists() or (PACKAGE.joinpath(*parts) / "__init__.py").exists()
    )


def _imports(tree: ast.AST) -> set[str]:
    """initlab modules imported anywhere in ``tree`` (module level or inside functions): a module,
    a submodule named in ``from initlab.pkg import module``, and every package above them, whose
    ``__init__.py`` runs first."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "initlab":
            found.add(node.module)  # `from initlab import kernels`: names in __init__
            found |= {f"{node.module}.{a.name}" for a in node.names if _exists(f"{node.module}.{a.name}")}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "initlab"}
    parents = {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}
    return found | parents


def _file(module: str) -> Path:
    """``initlab.a.b``: ``src/initlab/a/b.py``, or ``src/initlab/a/b/__init__.py`` for a package."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _is_command(fn: ast.FunctionDef) -> bool:
    return any(isinstance(d, ast.Call) and getattr(d.func, "attr", "") == "command" for d in fn.decorator_list)


def import_closure(command: str) -> set[str]:
    """Files of the package that ``initlab <command>`` imports: the package, cli.py, the imports of
    cli.py outside the other commands (module level, helpers, the ``stage`` decorator), those of
    the command itself, and everything those import, transitively (lazy imports included)."""
    cli = ast.parse((PACKAGE / "cli.py").read_text())
    todo = set()
    for node in cli.body:
        if isinstance(node, ast.FunctionDef) and _is_command(node):
            if node.name == command:
                todo |= _imports(node)
        else:
            todo |= _imports(node)
    seen = {"initlab", "initlab.cli"}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo |= _imports(ast.parse(_file(module).read_text()))
    return {_file(m).relative_to(REPO).as_posix() for m in seen}


def test_each_stage_depends_on_exactly_the_code_its_command_imports():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert stages
    for name, stage in stages.items():
        body = stage.get("do", stage)
        command = body["cmd"].split()[1]
        deps = set()
        for d in body.get("deps", []):  # a folder: the whole subpackage
            if d.startswith("src/"):
                path = REPO / d
                files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
                deps |= {f.relative_to(REPO).as_posix() for f in files}
        want = import_closure(command)
        assert deps == want, (
            f"dvc.yaml stage {name!r} (initlab {command}): missing "
            f"{sorted(want - deps)}, not imported {sorted(deps - want)}"
        )


def test_the_closure_follows_lazy_imports_and_the_decorator():
    # train imports signals and train inside the command, train imports models at module level,
    # and every command goes through config (the decorator's errors) and the package's __init__.
    train = import_closure("train")
    assert {
        "src/initlab/core/signals.py",
        "src/initlab/training/loop.py",
        "src/initlab/nets/models.py",
        "src/initlab/params/schema.py",
        "src/initlab/__init__.py",
        "src/initlab/cli.py",
    } <= train
    assert "src/initlab/tracking/log.py" not in train and "src/initlab/report/render.py" not in train
    assert "src/initlab/tracking/log.py" in import_closure("track")


def _stage_names() -> set[str]:
    """Every stage ``dvc repro`` accepts by name: ``track``, a foreach group ``evaluate``, and
    each of its stages ``evaluate@<study>`` (the studies of params.yaml)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    studies = yaml.safe_load((REPO / "params.yaml").read_text())["studies"]
    names = set(stages)
    for name, body in stages.items():
        if "foreach" in body:
            names |= {f"{name}@{study}" for study in studies}
    return names


def test_every_stage_a_fix_names_for_a_stage_output_is_in_dvc_yaml():
    from initlab.core.io import unreadable
    from initlab.params.paths import Paths

    studies = yaml.safe_load((REPO / "params.yaml").read_text())["studies"]
    paths = Paths()
    names = _stage_names()
    checked = 0
    for study in studies:
        outputs = [
            paths.raw(study) / "line.npz",
            paths.prepared(study),
            paths.prepared(study).with_suffix(".json"),
            paths.norm_stats(study),
            paths.trained(study) / "weights" / "x-s0.pt",
            paths.evaluated(study),
            paths.variants(study),
            paths.curves(study),
            paths.layers(study),
            paths.metrics(study),
        ]
        for out in outputs:
            message = str(unreadable(out, FileNotFoundError()))
            named = message.split("`dvc repro -f ")[1].rstrip("`")
            assert named in names and named.endswith(f"@{study}"), message
            checked += 1
    assert checked == 10 * len(studies)


def _strings(tree: ast.AST):
    """Every string literal of ``tree``, an f-string with ``{}`` for each of its values."""
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            yield "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


def test_every_stage_a_message_of_the_package_names_is_in_dvc_yaml():
    studies = yaml.safe_load((REPO / "params.yaml").read_text())["studies"]
    names = _stage_names()
    found = []
    for module in sorted(PACKAGE.rglob("*.py")):
        for text in _strings(ast.parse(module.read_text())):
            for command in re.findall(r"`dvc (?:repro|exp run)([^`]*)`", text):
                # (a stage given by a value, io.py's {}@{}, is the test above's)
                targets = [
                    t for t in command.split() if not t.startswith(("-", "{}")) and "<" not in t and "=" not in t
                ]
                for target in targets:  # a {value} in an f-string: any study
                    for name in {target.replace("{}", s) for s in studies}:
                        found.append((module.name, name))
                        assert name in names, f"{module.name}: `dvc repro {command.strip()}` names {name}"
    assert len(found) > 3 and ("runs.py", "evaluate@line") in found
