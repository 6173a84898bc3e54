"""Structure checks that ruff does not make: module size and repeated blocks.

`make lint` (and so CI) runs this. It fails when a module under `osteo_pipeline/` or `flows/` has
400 lines or more, or when a run of six or more statements of the same shape (the same tokens once
names, strings and numbers are blanked alike) stands twice inside `osteo_pipeline/`. Comments,
docstrings and imports do not count, nor do runs that mostly declare (constants, a dataclass's
fields) or repeat at most two shapes (a table of like rows).
"""

from __future__ import annotations

import io
import re
import sys
import tokenize
from collections import defaultdict
from pathlib import Path

MAX_LINES = 400
MIN_REPEATED = 6  # statements
SIZE_CHECKED = ("osteo_pipeline", "flows")
REPEATS_CHECKED = "osteo_pipeline"
SKIPPED = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
BLANKED = {tokenize.NAME: "_", tokenize.STRING: "_", tokenize.NUMBER: "_"}
KEYWORDS = frozenset(__import__("keyword").kwlist) | {"self", "cls", "None", "True", "False"}


def code_statements(path: Path) -> list[tuple[int, str]]:
    """(first line, shape) of each statement that is code, not an import or a docstring."""
    statements: list[tuple[int, str]] = []
    tokens: list[tokenize.TokenInfo] = []
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type == tokenize.NEWLINE:
            if not _import_or_docstring(tokens):
                statements.append((tokens[0].start[0], _shape(tokens)))
            tokens = []
        elif token.type not in SKIPPED and token.type != tokenize.ENDMARKER:
            tokens.append(token)
    return statements


def _shape(tokens: list[tokenize.TokenInfo]) -> str:
    return " ".join(
        t.string if t.string in KEYWORDS else BLANKED.get(t.type, t.string) for t in tokens
    )


def _declares(shape: str) -> bool:
    """A decorator, a class line, or a name bound or annotated without a call: declarations."""
    return (
        shape.startswith(("@", "class "))
        or re.fullmatch(r"_( : [^=(]+)?( = [^(]+)?", shape) is not None
    )


def _import_or_docstring(statement: list[tokenize.TokenInfo]) -> bool:
    if not statement:
        return True
    return statement[0].string in ("import", "from") or (
        len(statement) == 1 and statement[0].type == tokenize.STRING
    )


def oversized(root: Path) -> list[str]:
    problems = []
    for folder in SIZE_CHECKED:
        for path in sorted((root / folder).rglob("*.py")):
            count = len(path.read_text().splitlines())
            if count >= MAX_LINES:
                problems.append(f"{path.relative_to(root)}: {count} lines (limit {MAX_LINES - 1})")
    return problems


def repeated_blocks(root: Path) -> list[str]:
    seen: dict[tuple[str, ...], list[tuple[str, int]]] = defaultdict(list)
    for path in sorted((root / REPEATS_CHECKED).rglob("*.py")):
        lines = code_statements(path)
        for start in range(len(lines) - MIN_REPEATED + 1):
            window = tuple(shape for _, shape in lines[start : start + MIN_REPEATED])
            if len(set(window)) <= 2 or sum(map(_declares, window)) > MIN_REPEATED // 2:
                continue  # data or declarations: a table of like rows, a dataclass's fields
            seen[window].append((str(path.relative_to(root)), lines[start][0]))
    problems = []
    reported: set[tuple[str, int]] = set()
    for places in seen.values():
        if len(places) < 2:
            continue
        if not any(place in reported for place in places):  # not the tail of a longer block
            problems.append("repeated block: " + " ~ ".join(f"{f}:{line}" for f, line in places))
        reported.update((f, line + offset) for f, line in places for offset in range(MIN_REPEATED))
    return problems


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    problems = oversized(root) + repeated_blocks(root)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
