"""Reading README.md and docs/*.md for the docs tests: fenced blocks, their markers, tables.

Owns: ``DOC_FILES``, ``Block`` and ``blocks()`` (every fenced block with its language, line and
the marker comment above it), ``is_shell`` (which blocks are commands a reader is told to run)
and ``backtick_spans``. Markers, on one of the three lines above a fence:

- ``<!-- not-runnable: REASON -->``: the block is not executed here; the reason is required;
- ``<!-- runnable: sandbox=NAME -->``: executed in the named sandbox (tests/docs/sandbox.py);
  a shell block without any marker is executed in the default sandbox.

Must not import p2preg: these helpers only read text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
SHELL_LANGS = frozenset({"sh", "bash", "shell", "console"})
# An unlabelled block whose first command starts with one of these is a shell block too.
COMMAND_WORDS = frozenset({"p2preg", "sudo", "systemctl", "nft", "python", "python3", "curl",
                           "docker", "skopeo", "podman", "ctr", "openssl", "htpasswd", "pip",
                           "bash", "apt-get", "install", "kubectl", "helm"})
_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_MARKER = re.compile(r"<!--\s*(not-runnable|runnable)\s*(?::\s*(.*?))?\s*-->")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str | None  # "runnable" / "not-runnable" / None
    marker_arg: str  # the reason, or "sandbox=NAME"

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def sandbox(self) -> str:
        match = re.search(r"sandbox=([\w-]+)", self.marker_arg)
        return match.group(1) if match else "default"


def blocks(path: Path) -> Iterator[Block]:
    lines = path.read_text().split("\n")
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, lang = match.groups()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith("```"):
            j += 1
        body = "\n".join(line[len(indent):] if line.startswith(indent) else line.lstrip()
                         for line in lines[i + 1:j])
        marker, arg = None, ""
        k, seen = i - 1, 0
        while k >= 0 and seen < 3:
            if lines[k].strip():
                seen += 1
                found = _MARKER.search(lines[k])
                if found:
                    marker, arg = found.group(1), found.group(2) or ""
                    break
                if not lines[k].strip().startswith("<!--"):
                    break
            k -= 1
        yield Block(path, i + 1, lang, body + "\n", marker, arg.strip())
        i = j + 1


def first_command(text: str) -> str:
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return stripped
    return ""


def is_shell(block: Block) -> bool:
    if block.lang in SHELL_LANGS:
        return True
    if block.lang:
        return False
    word = first_command(block.text).split(" ", 1)[0]
    return word in COMMAND_WORDS or word.startswith((".venv/", "./", "$ "))


def all_blocks() -> list[Block]:
    return [b for path in DOC_FILES for b in blocks(path)]


def prose(path: Path) -> str:
    """The file without its fenced blocks."""
    out, inside = [], False
    for line in path.read_text().split("\n"):
        if _FENCE.match(line) or (inside and line.strip().startswith("```")):
            inside = not inside
            continue
        if not inside:
            out.append(line)
    return "\n".join(out)


def backtick_spans(text: str) -> list[str]:
    return re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text)
