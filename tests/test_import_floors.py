"""No module of vjepa_fast imports from a floor above its own (docs/architecture.md, "Import floors").

The floors are read from the table in docs/architecture.md itself, so the rule and its documentation cannot drift.
Every import counts: at module level and inside functions (a lazy import is still an arrow), `import a.b`,
`from a import b` (b a module or a name) and `importlib.import_module("a.b")` with a literal name.
"""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
TABLE_START = "<!-- import floors -->"

# (importing file, imported module) -> why it is still there. An entry that no longer matches an import fails the
# test, so the list only shrinks.
ALLOWED: dict[tuple[str, str], str] = {}


def read_floors(doc: str) -> list[tuple[str, list[str]]]:
    """[(floor, module prefixes)] top to bottom, from the fenced block after TABLE_START: one floor a line, its name
    then its module prefixes (words starting with `vjepa_fast`); anything else on the line is commentary."""
    lines = doc[doc.index(TABLE_START):].splitlines()[1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("```"))
    floors = []
    for line in lines[start + 1:]:
        if line.startswith("```"):
            break
        words = line.split()
        if words:
            floors.append((words[0], [w.strip(",") for w in words[1:] if w.startswith("vjepa_fast")]))
    return floors


def floor_of(module: str, floors: list[tuple[str, list[str]]]) -> int:
    """Index of the floor (0 = top) whose longest prefix matches `module`."""
    best, index = -1, None
    for i, (_name, prefixes) in enumerate(floors):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, index = len(p), i
    if index is None:
        raise AssertionError(f"{module}: on no floor of the table in docs/architecture.md")
    return index


def modules_of(root: Path, package: str = "vjepa_fast") -> dict[str, Path]:
    """Dotted name -> file of every Python module (and compiled extension) of the package under `root`."""
    out = {}
    for path in sorted((root / package).rglob("*")):
        if path.suffix not in (".py", ".so"):
            continue
        parts = list(path.relative_to(root).with_suffix("").parts)
        parts[-1] = parts[-1].split(".")[0]  # _C.cpython-311-x86_64-linux-gnu -> _C
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(path: Path, module: str, known: dict) -> Iterator[tuple[int, str]]:
    """(line, imported project module) of every import in the file, wherever in the file it is."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                yield node.lineno, (f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value


def back_arrows(root: Path, floors: list[tuple[str, list[str]]],
                allowed: dict[tuple[str, str], str]) -> tuple[list[str], set[tuple[str, str]]]:
    """(one line per import that runs up a floor, the allow-list entries that were used)."""
    # the table's own names count as modules too (the compiled _C exists only once built)
    known = {**{p: None for _, prefixes in floors for p in prefixes}, **modules_of(root)}
    found, used = {}, set()
    for module, path in known.items():
        if path is None or path.suffix != ".py":
            continue
        rel = path.relative_to(root).as_posix()
        own = floor_of(module, floors)
        for line, target in imports_of(path, module, known):
            if not (target == "vjepa_fast" or target.startswith("vjepa_fast.")):
                continue
            up = floor_of(target, floors)
            if up < own:
                if (rel, target) in allowed:
                    used.add((rel, target))
                    continue
                found[(rel, line, target)] = f"{rel}:{line}: imports {target} (floor {floors[up][0]}) from floor " \
                                             f"{floors[own][0]}"
    return [found[k] for k in sorted(found)], used


def test_no_module_imports_from_a_floor_above_its_own():
    floors = read_floors(DOC.read_text())
    found, used = back_arrows(ROOT, floors, ALLOWED)
    assert not found, "imports that run up a floor (docs/architecture.md, Import floors):\n" + "\n".join(found)
    assert used == set(ALLOWED), f"allow-list entries that match no import any more: {sorted(set(ALLOWED) - used)}"


def test_every_module_is_on_a_floor_and_the_table_is_ordered():
    floors = read_floors(DOC.read_text())
    names = [name for name, _ in floors]
    assert names[0] == "entry" and len(names) == len(set(names)) >= 5, names
    for module in modules_of(ROOT):
        floor_of(module, floors)  # raises for a module the table does not place


FLOORS = """
<!-- import floors -->
```
top     vjepa_fast          (the package and any top-level module)
middle  vjepa_fast.mid
bottom  vjepa_fast.low  vjepa_fast.low2
```
"""


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / "vjepa_fast" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def test_a_planted_back_import_is_found_with_its_file_and_line(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": "",
        "entry.py": "from vjepa_fast.mid import helpers\nimport vjepa_fast.low\n",  # downward: fine
        "mid/__init__.py": "", "mid/helpers.py": "from vjepa_fast.low import thing\n",
        "low.py": "import os\n\n\ndef f():\n    from vjepa_fast.mid import helpers  # planted\n    return helpers\n",
        "low2.py": "from . import low\nimport importlib\nimportlib.import_module('vjepa_fast.entry')\n",
    })
    floors = read_floors(FLOORS)
    assert [name for name, _ in floors] == ["top", "middle", "bottom"]
    found, _ = back_arrows(root, floors, {})
    assert found == ["vjepa_fast/low.py:5: imports vjepa_fast.mid.helpers (floor middle) from floor bottom",
                     "vjepa_fast/low2.py:3: imports vjepa_fast.entry (floor top) from floor bottom"], found
    # an allow-list entry silences exactly its own pair and is reported as used
    found, used = back_arrows(root, floors, {("vjepa_fast/low.py", "vjepa_fast.mid.helpers"): "why"})
    assert used == {("vjepa_fast/low.py", "vjepa_fast.mid.helpers")} and len(found) == 1


def test_a_clean_tree_has_no_back_arrows(tmp_path):
    root = _tree(tmp_path, {"__init__.py": "", "entry.py": "from vjepa_fast import mid, low\n",
                            "mid.py": "from vjepa_fast.low import x\n", "low.py": "x = 1\n"})
    assert back_arrows(root, read_floors(FLOORS), {}) == ([], set())


def test_the_config_schema_is_a_leaf():
    """Every floor reads the schema (a Config, a ConfigError), so it imports nothing of the project at all."""
    path = ROOT / "vjepa_fast" / "config" / "schema.py"
    found = [f"line {line}: {target}" for line, target in imports_of(path, "vjepa_fast.config.schema", modules_of(ROOT))
             if target == "vjepa_fast" or target.startswith("vjepa_fast.")]
    assert not found, found
