"""The rooms' imports point one way (docs/design.md, "Parts, and what each may import"): a room
imports only the rooms before it in ORDER. Read from the source with ast, lazy imports inside
functions included, so a cycle hidden in a function body fails too."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORDER = ("keys", "db", "devices", "search_spaces", "harness", "search", "workers", "tuner")


def imported_rooms(path: Path) -> set[tuple[int, str]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
        found.update((node.lineno, n.split(".")[0]) for n in names if n.split(".")[0] in ORDER)
    return found


def offences(room: str) -> list[str]:
    allowed = set(ORDER[:ORDER.index(room) + 1])
    return [f"{p.relative_to(ROOT)}:{line} imports {other}" for p in sorted((ROOT / room).rglob("*.py"))
            if "migrations" not in p.parts for line, other in imported_rooms(p) if other not in allowed]


def test_every_room_imports_only_the_rooms_below_it():
    bad = [o for room in ORDER for o in offences(room)]
    assert not bad, "an import runs back up (docs/design.md orders the rooms):\n" + "\n".join(bad)


def test_the_check_sees_a_lazy_import_back_up(tmp_path):
    src = tmp_path / "x.py"
    src.write_text("def f():\n    from search_spaces import registry\n    import tuner.settings\n")
    assert imported_rooms(src) == {(2, "search_spaces"), (3, "tuner")}
    assert "search_spaces" not in ORDER[:ORDER.index("devices") + 1]  # devices may not import it
