"""File paths and error messages quoted in README.md and docs/ against the code.

- A repository path (``p2preg/…``, ``deploy/…``, ``docs/…``, ``tests/…``) in backticks or a
  link exists; a ``<data-dir>/NAME`` is a name the store layout uses.
- A ``p2preg: configuration error:`` line quoted in the docs is produced, word for word up to
  paths, numbers and quoted values, by running ``p2preg serve`` into that mistake.
- Any other quoted message (a "quoted" string, a ``--flag (source): …`` line, an OCI error JSON,
  a log event) is made of text that the code (or aiohttp, for its connection errors) contains.
"""

from __future__ import annotations

import ast
import json
import re
from functools import cache
from pathlib import Path

import aiohttp
import pytest

import p2preg
from tests.docs.markdown import DOC_FILES, ROOT, all_blocks, backtick_spans, prose
from tests.support.serve import run_serve

_REPO_PATH = re.compile(r"^(?:p2preg|tests|deploy|docs|benchmarks|\.ci)/[\w./-]*[\w/]$")
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
_CONFIG_ERROR = re.compile(r"p2preg: configuration error: [^\n]+")


def test_repository_paths_in_the_docs_exist() -> None:
    missing = []
    for path in DOC_FILES:
        text = path.read_text()
        for span in backtick_spans(text):
            candidate = span.split(" ", 1)[0].rstrip(",.;:")
            if not _REPO_PATH.match(candidate) or (ROOT / candidate).exists():
                continue
            # "tests/support/netns.NetnsLab": a name in a module, the module must exist
            module = re.sub(r"\.[A-Za-z_]\w*$", ".py", candidate)
            if module == candidate or not (ROOT / module).exists():
                missing.append(f"{path.name}: {candidate}")
        for target in _LINK.findall(text):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (path.parent / target).exists():
                missing.append(f"{path.name}: link {target}")
    assert missing == []


def test_data_dir_names_in_the_docs_are_the_codes() -> None:
    """``<data-dir>/NAME``: NAME is a file or directory name the code uses (a string constant of
    p2preg/, e.g. the store layout's ``metadata.db`` or the mirror's ``taglists``)."""
    names = set(literal_pieces(include_aiohttp=False))
    wrong = []
    for path in DOC_FILES:
        for name in re.findall(r"<data-dir>/([\w.-]+)", path.read_text()):
            if name not in names:
                wrong.append(f"{path.name}: <data-dir>/{name}")
    assert wrong == []


# ----------------------------------------------------------------- configuration error lines


def _normalize(line: str) -> str:
    line = re.sub(r"(?<![\w<])/[\w./-]+", "PATH", line)
    line = re.sub(r"'[^']*'", "'Q'", line)
    line = re.sub(r"\b\d+(\.\d+)*(:\d+)?\b", "N", line)
    return line.strip().rstrip(".")


def _documented_error_lines() -> list[tuple[str, str]]:
    found = []
    for path in DOC_FILES:
        for line in _CONFIG_ERROR.findall(path.read_text()):
            if "<option>" not in line:
                found.append((path.name, line.strip()))
    return found


def _reproduce(line: str, tmp: Path) -> str:
    """Run ``p2preg serve`` into the mistake the documented line describes."""
    option = line.removeprefix("p2preg: configuration error: ").split(" ", 1)[0]
    data_dir = tmp / "data"
    if option == "--htpasswd":
        match = re.search(r"line (\d+) \(user '([^']+)'\)", line)
        assert match, line
        number, user = int(match.group(1)), match.group(2)
        htpasswd = tmp / "htpasswd"
        md5 = "$apr1$9sCz7Ytp$dl3aT1WxkuLkEPLy/y3c4/"
        htpasswd.write_text("#\n" * (number - 1) + f"{user}:{md5}\n")
        done = run_serve(tmp, ["--htpasswd", str(htpasswd)], {}, data_dir)
    elif option == "--data-dir":
        from p2preg.storage.layout import StoreLayout
        from p2preg.storage.lock import DataDirLock

        layout = StoreLayout(data_dir)
        layout.ensure()
        lock = DataDirLock(layout)
        lock.acquire()
        try:
            done = run_serve(tmp, [], {}, data_dir)
        finally:
            lock.release()
    elif option == "--gossip-listen":
        match = re.search(r"the wildcard (\S+)", line)
        assert match, line
        done = run_serve(tmp, ["--gossip-listen", match.group(1)], {}, data_dir)
    elif option == "--listen" and "upstream credentials" in line:
        config = tmp / "docker-config.json"
        config.write_text('{"auths": {"docker.io": {"auth": "dTpw"}}}')
        done = run_serve(tmp, ["--listen", "0.0.0.0:0", "--docker-config", str(config)], {},
                         data_dir)
    else:
        pytest.fail(f"no recipe reproduces the documented error for {option}: add one here")
    assert done.returncode == 2
    return done.stderr.strip()


@pytest.mark.parametrize(("doc", "line"), _documented_error_lines(),
                         ids=[f"{d}:{line[29:60]}" for d, line in _documented_error_lines()])
def test_a_documented_configuration_error_is_what_the_node_prints(
    doc: str, line: str, tmp_path: Path
) -> None:
    assert _normalize(_reproduce(line, tmp_path)) == _normalize(line)


# ----------------------------------------------------------------- other quoted messages


@cache
def literal_pieces(include_aiohttp: bool = True) -> tuple[str, ...]:
    """Every string constant (and constant part of an f-string) in p2preg/ (and aiohttp/)."""
    pieces: list[str] = []
    for package in (p2preg, aiohttp) if include_aiohttp else (p2preg,):
        for source in Path(str(package.__file__)).parent.rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    pieces.append(node.value)
    return tuple(pieces)


_VARIABLE = re.compile(
    r"--[\w-]+ \([^)]*\):|: |'[^']*'|https?://\S+|(?<![\w<])/[\w./-]+|\b[\w-]+(?:\.[\w-]+)+(?::\d+)?\b|\d+|…|<[^>]+>")
_MESSAGE_WORDS = re.compile(r"\b(expected|cannot|refused|failed|must|no such|in use|invalid|"
                            r"unknown|denied)\b", re.I)


def _messages_in(span: str) -> list[str]:
    if span.startswith("{"):
        try:
            doc = json.loads(span)
        except ValueError:
            return []
        found = [e.get("message", "") for e in doc.get("errors", []) if isinstance(e, dict)]
        return [m for m in found if isinstance(m, str)]
    if span.startswith("[") or not _MESSAGE_WORDS.search(span):
        return []
    return [span.strip('"')]


def quoted_messages() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for path in DOC_FILES:
        for span in backtick_spans(prose(path)):
            if "configuration error" in span or len(span.split()) < 3:
                continue
            found.extend((path.name, message) for message in _messages_in(span))
    for block in all_blocks():
        if block.lang == "json":
            for line in block.text.splitlines():
                found.extend((block.where, m) for m in _messages_in(line.strip()))
    return found


@pytest.mark.parametrize(("doc", "message"), quoted_messages(),
                         ids=[f"{d}:{m[:40]}" for d, m in quoted_messages()])
def test_a_quoted_message_is_text_the_code_contains(doc: str, message: str) -> None:
    pieces = literal_pieces()
    for fragment in _VARIABLE.split(message):
        words = fragment.strip(" :;,.()[]\"").split()
        if len(words) < 2:
            continue
        text = " ".join(words)
        assert any(text in piece for piece in pieces), f"{doc}: {text!r} is not in the code"
