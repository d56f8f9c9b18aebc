"""docs/internals.md: its module trees list exactly the modules on disk (a moved, added or removed module is named).

A tree is a fenced block whose first line is ``agents/`` (or ``seqenv/``); an entry is a line whose name (``x.py``
or a folder ``sub/``) starts at two spaces per level, and a line indented eight or more spaces continues the
description above it.
"""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INTERNALS = ROOT / "docs" / "internals.md"
CONTINUATION_INDENT = 8


def tree_block(text: str, package: str) -> list[str]:
    """The lines of the fenced block whose first line is ``{package}/``."""
    block = None
    for line in text.splitlines():
        if line.startswith("```"):
            if block is not None and block and block[0].strip() == f"{package}/":
                return block
            block = [] if block is None else None
        elif block is not None:
            block.append(line)
    raise AssertionError(f"docs/internals.md has no tree block starting with the line '{package}/'")


def listed_modules(lines: list[str]) -> set[str]:
    """The ``.py`` paths (relative to the repository root) that a tree block lists."""
    path = [lines[0].strip().rstrip("/")]
    listed = set()
    for line in lines[1:]:
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip() or indent >= CONTINUATION_INDENT:
            continue
        if indent % 2:
            raise AssertionError(f"docs/internals.md tree line indented by an odd number of spaces: {line!r}")
        name = line.split()[0]
        path = path[: indent // 2]
        if name.endswith("/"):
            path.append(name.rstrip("/"))
        elif name.endswith(".py"):
            listed.add("/".join([*path, name]))
        else:
            raise AssertionError(f"docs/internals.md tree entry is neither a module nor a folder: {line!r}")
    return listed


def modules_on_disk(package: str) -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts}


def test_tree_parser_on_a_hand_written_block():
    lines = [
        "pkg/",
        "  __init__.py       exports",
        "  sub/",
        "    a.py            one",
        "                    the description goes on (not an entry: b.py)",
        "  c.py              two",
    ]
    assert listed_modules(lines) == {"pkg/__init__.py", "pkg/sub/a.py", "pkg/c.py"}
    with pytest.raises(AssertionError, match="neither a module nor a folder"):
        listed_modules(["pkg/", "  README.md  text"])


@pytest.mark.parametrize("package", ["agents", "seqenv"])
def test_internals_tree_matches_the_modules_on_disk(package):
    listed = listed_modules(tree_block(INTERNALS.read_text(encoding="utf-8"), package))
    on_disk = modules_on_disk(package)
    problems = [
        f"{m} is on disk but not in docs/internals.md's {package}/ tree: add a line for it"
        for m in sorted(on_disk - listed)
    ]
    problems += [
        f"docs/internals.md's {package}/ tree lists {m}, which is not on disk: remove or rename its line"
        for m in sorted(listed - on_disk)
    ]
    assert not problems, "\n".join(problems)
