"""Every Python block of README.md runs, so the documentation cannot rot.

Each ```python block runs in a fresh namespace in a temporary working directory. A block that is not
meant to run is preceded by the line ``<!-- norun -->`` (use sparingly). The Quickstart holds exactly
the two commands a fresh machine needs, and CI runs the second.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "README.md"
NORUN = "<!-- norun -->"
FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")


@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # 1-based line of the opening fence
    code: str
    skip: bool

    @property
    def id(self) -> str:
        first = next((s.strip() for s in self.code.splitlines() if s.strip() and not s.startswith("#")), "")
        return f"L{self.line}:{first[:40]}"


def blocks(markdown: str) -> list[Block]:
    """The fenced code blocks of ``markdown``; ``skip`` when the previous non-blank line is the norun marker."""
    out: list[Block] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        if j == len(lines):
            raise ValueError(f"README line {start + 1}: code block never closed")
        before = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        out.append(Block(lang, start + 1, "\n".join(lines[start + 1 : j]) + "\n", before == NORUN))
        i = j + 1
    return out


def section(markdown: str, title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, flags=re.M | re.S)
    assert m, f"README has no section '## {title}'"
    return m.group(1)


PYTHON = [b for b in blocks(README.read_text()) if b.lang == "python"]


def test_block_parser() -> None:
    text = "\n".join(
        [
            "# t", "```python", "a = 1", "```", "", NORUN, "", "```python", "raise SystemExit", "```",
            "```bash", "ls", "```", "```", "plain", "```",
        ]
    )  # fmt: skip
    got = blocks(text)
    assert [(b.lang, b.line, b.code, b.skip) for b in got] == [
        ("python", 2, "a = 1\n", False),
        ("python", 8, "raise SystemExit\n", True),
        ("bash", 11, "ls\n", False),
        ("", 14, "plain\n", False),
    ]
    with pytest.raises(ValueError, match="never closed"):
        blocks("```python\nx = 1\n")


def test_readme_has_python_blocks_and_few_skipped() -> None:
    assert len(PYTHON) >= 5
    assert sum(b.skip for b in PYTHON) <= 2, "mark blocks norun sparingly"


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_block_runs(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if block.skip:
        pytest.skip("marked <!-- norun --> in README.md")
    monkeypatch.chdir(tmp_path)
    code = compile(block.code, f"README.md:{block.line}", "exec")
    exec(code, {"__name__": f"readme_block_{block.line}"})


def test_quickstart_is_two_commands_and_ci_runs_the_tests() -> None:
    quick = [b for b in blocks(section(README.read_text(), "Quickstart"))]
    assert len(quick) == 1 and quick[0].lang in ("bash", "sh", "console")
    commands = [line.split("#")[0].strip() for line in quick[0].code.splitlines() if line.split("#")[0].strip()]
    assert commands == ["python -m pip install nox && nox -s demo", "nox"]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    runs = [shlex.split(line) for line in ci if line and not line.startswith("#")]
    commands = [[word for word in run if "=" not in word] for run in runs]  # less the environment settings
    noxes = [command for command in commands if command[0] == "nox"]
    assert noxes == [["nox"], ["nox", "-s", "reference"]], "CI runs the test command, then the reference check"
