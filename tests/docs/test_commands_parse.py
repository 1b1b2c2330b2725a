"""Every ``p2preg …`` command the docs show inline (in backticks, or a line of a shell block)
parses with the real command line parser: a renamed or removed flag in prose fails here, even
where the command itself cannot run in a sandbox. Spans with metasyntax (``[…]``, ``a|b``,
``…``, ``<x>``) are templates, not commands, and are skipped."""

from __future__ import annotations

import shlex

import pytest

from p2preg.cli import build_parser
from tests.docs.markdown import DOC_FILES, all_blocks, backtick_spans, is_shell, prose


def inline_commands() -> list[tuple[str, str]]:
    found = [(p.name, s) for p in DOC_FILES for s in backtick_spans(prose(p))
             if s.startswith("p2preg ")]
    for block in all_blocks():
        if is_shell(block):
            text = block.text.replace("\\\n", " ")
            found += [(block.where, line.split(" #", 1)[0].strip())
                      for line in text.splitlines()
                      if line.strip().startswith(("p2preg ", "sudo p2preg "))]
    # A template (metasyntax) or a bare "p2preg members" (a command's name) is not an invocation.
    return [(where, c) for where, c in found
            if not any(mark in c for mark in ("[", "|", "…", "<", "..."))
            and len(c.split("p2preg ", 1)[1].split()) >= 2]


@pytest.mark.parametrize(("where", "command"), inline_commands(),
                         ids=[f"{w}:{c[:50]}" for w, c in inline_commands()])
def test_a_documented_command_parses(where: str, command: str) -> None:
    words = shlex.split(command, comments=True)
    words = words[words.index("p2preg") + 1:]
    cut = next((i for i, w in enumerate(words) if w in (">>", ">", "&&", "|", ";")), len(words))
    try:
        build_parser().parse_args(words[:cut])
    except SystemExit as exc:
        if exc.code != 0:  # --help exits 0
            pytest.fail(f"{where}: `{command}` does not parse ({exc.code})")
