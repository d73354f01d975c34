"""The package's shape: imports point only downwards, no function is too branchy, the docs list every module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "llava"

# Lower layers never import higher ones; a part may import its own layer's other parts only where listed.
LAYERS = (
    ("constants", "anyres"),
    ("vision_config", "conversation", "pixel_recipe", "utils"),
    ("mm_utils",),
    ("data", "model"),
    ("export", "train"),
    ("serve",),
    ("eval",),
    ("demo",),
)
MAX_COMPLEXITY = 20


def part_of(module: str) -> str | None:
    """`llava.data.dataset` -> `data`; the package itself -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "llava" else None


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m == "llava" or m.startswith("llava.")}


def layer(part: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if part in names)


def upward_imports(package: Path = PACKAGE) -> list[str]:
    bad = []
    for path in sorted(package.rglob("*.py")):
        module = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        source = part_of(module)
        if source is None or source == "__init__":
            continue
        for target in map(part_of, imports(path)):
            if target is None or target == source:
                continue
            if layer(target) >= layer(source):
                bad.append(f"{module} imports llava.{target} (layer {layer(target)} >= {layer(source)})")
    return bad


def test_every_part_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").is_file())}
    assert parts == {name for names in LAYERS for name in names}


def test_imports_point_only_downwards():
    assert upward_imports() == []


def test_the_layer_check_can_fail(tmp_path):
    """An upward import planted in a scratch tree is found and named."""
    (tmp_path / "llava" / "data").mkdir(parents=True)
    (tmp_path / "llava" / "data" / "x.py").write_text("from llava.train.train import train\n")
    assert upward_imports(tmp_path / "llava") == ["llava.data.x imports llava.train (layer 4 >= 3)"]


def test_no_function_is_too_branchy():
    radon = pytest.importorskip("radon.complexity")
    too_complex = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for block in radon.cc_visit(path.read_text(encoding="utf-8")):
            if block.complexity > MAX_COMPLEXITY:
                too_complex.append(f"{path.relative_to(ROOT)}:{block.lineno} {block.name} ({block.complexity})")
    assert too_complex == []


def test_architecture_doc_names_every_module():
    doc = (ROOT / "docs" / "Architecture.md").read_text(encoding="utf-8")
    layout = doc[doc.index("## Layout"):]
    layout = layout[: layout.index("```", layout.index("```") + 3)]
    named = set(re.findall(r"[\w/]*?(\w+)\.py", layout))
    missing = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                     if p.stem != "__init__" and p.stem not in named)
    assert missing == []
