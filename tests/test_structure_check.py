"""tools/check_structure.py (run by `make lint` in CI) finds what it is there to find."""

import subprocess
import sys
from pathlib import Path

CHECK = Path(__file__).resolve().parent.parent / "tools" / "check_structure.py"

BODY = """
def {name}(rows, limit):
    kept = []
    for row in rows:
        if row.size > limit:
            raise ValueError(f"{{row.path}} is over {{limit}}")
        kept.append(row.path)
    total = sum(len(path) for path in kept)
    return kept, total
"""


def _check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), str(root)], capture_output=True, text=True)


def test_a_copied_function_with_other_names_and_an_oversized_module_are_refused(tmp_path):
    package = tmp_path / "osteo_pipeline"
    package.mkdir()
    (tmp_path / "flows").mkdir()
    (package / "a.py").write_text(BODY.format(name="first"))
    (package / "b.py").write_text(BODY.format(name="second").replace("limit", "bound"))
    (tmp_path / "flows" / "big.py").write_text("x = 1\n" * 400)

    result = _check(tmp_path)

    assert result.returncode == 1
    assert "repeated block: osteo_pipeline/a.py:2 ~ osteo_pipeline/b.py:2" in result.stderr
    assert "flows/big.py: 400 lines" in result.stderr


def test_declarations_and_distinct_code_pass(tmp_path):
    package = tmp_path / "osteo_pipeline"
    package.mkdir()
    (tmp_path / "flows").mkdir()
    fields = "from dataclasses import dataclass\n\n@dataclass\nclass {name}:\n" + "".join(
        f"    field_{i}: int = {i}\n" for i in range(8)
    )
    (package / "a.py").write_text(fields.format(name="A") + BODY.format(name="first"))
    (package / "b.py").write_text(fields.format(name="B") + "x = [1, 2]\n" * 20)

    assert _check(tmp_path).returncode == 0
