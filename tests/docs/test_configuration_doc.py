"""docs/configuration.md against the real parser, both ways; every TOML example loads.

The options table must have one row per ``p2preg serve`` flag (a new option without a row fails
here), each row's environment variable and TOML key must be the ones the loader reads, and a
documented default must be the real default. Flags, ``P2PREG_*`` variables and TOML keys named
anywhere in docs/ must exist.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from p2preg.cli import build_parser
from p2preg.config import OPTIONS, Config, load_config
from tests.docs.markdown import DOC_FILES, ROOT, all_blocks, backtick_spans

CONFIG_DOC = ROOT / "docs" / "configuration.md"
_ROW = re.compile(r"^\| `(--[a-z0-9-]+)[^`]*`[^|]*\| `(P2PREG_[A-Z0-9_]+)` \| `([a-z0-9_]+)` \| "
                  r"([^|]*) \|")


def documented_rows() -> dict[str, tuple[str, str, str]]:
    rows = {}
    for line in CONFIG_DOC.read_text().splitlines():
        match = _ROW.match(line)
        if match:
            flag, env, key, default = match.groups()
            assert flag not in rows, f"{flag} has two rows"
            rows[flag] = (env, key, default.strip())
    return rows


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def flags_of(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings
            if s.startswith("--") and not s.startswith("--no-")} - {"--help"}


def test_every_serve_flag_has_a_row_and_every_row_a_flag() -> None:
    rows = documented_rows()
    serve = flags_of(subparsers()["serve"]) - {"--config"}
    assert sorted(serve - set(rows)) == [], "serve flags missing from docs/configuration.md"
    assert sorted(set(rows) - serve) == [], "rows for flags serve does not have"


def test_each_row_names_the_variable_and_key_the_loader_reads() -> None:
    by_flag = {o.flag: o for o in OPTIONS}
    for flag, (env, key, _) in documented_rows().items():
        opt = by_flag[flag]
        assert env == opt.env, flag
        assert key == opt.name, flag
        # The loader really reads that key from a file (an unknown key would be an error).
        assert key in {o.name for o in OPTIONS}


def _toml_value(opt_kind: type, text: str) -> str:
    if opt_kind is str:
        return '"' + text + '"'
    return text


@pytest.mark.parametrize("opt", OPTIONS, ids=[o.name for o in OPTIONS])
def test_the_documented_default_is_the_real_default(opt: Any, tmp_path: Path) -> None:
    rows = documented_rows()
    if opt.flag not in rows:
        pytest.fail(f"{opt.flag} is not documented")
    default = rows[opt.flag][2]
    real = getattr(Config(), opt.name)
    if default in ("—", "auto"):
        assert real in (None, (), False) or opt.name == "data_dir", (
            f"{opt.flag}: documented as {default}, real default {real!r}")
        return
    match = re.fullmatch(r"`([^`]*)`", default)
    assert match, f"{opt.flag}: default column {default!r} is not a `value`, — or auto"
    toml = tmp_path / "default.toml"
    toml.write_text(f"{opt.name} = {_toml_value(opt.kind, match.group(1))}\n")
    ns = argparse.Namespace(config=str(toml))
    assert getattr(load_config(ns, environ={}), opt.name) == real, opt.flag


def test_flags_named_in_configuration_md_exist() -> None:
    known = set().union(*(flags_of(p) for p in subparsers().values())) | {"--help"}
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", CONFIG_DOC.read_text()))
    assert sorted(named - known) == []


def test_every_p2preg_variable_named_in_the_docs_is_read() -> None:
    known = {o.env for o in OPTIONS} | {"P2PREG_CONFIG"}
    for path in DOC_FILES:
        named = set(re.findall(r"\bP2PREG_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
        assert sorted(named - known) == [], path.name


def _toml_examples() -> list[tuple[str, str]]:
    found = [(b.where, b.text) for b in all_blocks() if b.lang == "toml"
             and ("[[upstream]]" in b.text or re.search(r"^[a-z_]+ =", b.text, re.M))]
    found.append(("deploy/p2preg.toml", (ROOT / "deploy" / "p2preg.toml").read_text()))
    return found


@pytest.mark.parametrize(("where", "text"), _toml_examples(),
                         ids=[w for w, _ in _toml_examples()])
def test_every_node_toml_example_loads(where: str, text: str, tmp_path: Path) -> None:
    path = tmp_path / "p2preg.toml"
    path.write_text(text)
    load_config(argparse.Namespace(config=str(path)), environ={})


def test_the_example_file_and_its_upstreams_load() -> None:
    from p2preg.upstream.config import upstreams_from_config

    ns = argparse.Namespace(config=str(ROOT / "deploy" / "p2preg.toml"))
    config = load_config(ns, environ={})
    assert upstreams_from_config(config).registries == ["docker.io", "ghcr.io"]
    assert config.cache_max_bytes is None and config.cache_max_disk_ratio == 0.8


def test_upstream_table_keys_are_documented_both_ways() -> None:
    import p2preg.upstream.config as upstream_config

    source = Path(upstream_config.__file__).read_text()
    known_block = re.search(r"known = \{(.*?)\}", source, re.S)
    assert known_block
    known = set(re.findall(r'"([a-z_]+)"', known_block.group(1))) - {"_source"}
    if "*_TOML_SECONDS" in known_block.group(1):
        seconds = re.search(r"_TOML_SECONDS = \((.*?)\)", source, re.S)
        assert seconds
        known |= set(re.findall(r'"([a-z_]+)"', seconds.group(1)))
    mirror_doc = (ROOT / "docs" / "mirror.md").read_text()
    documented = {s for s in backtick_spans(mirror_doc) if s in known}
    assert sorted(known - documented) == [], "[[upstream]] keys missing from docs/mirror.md"
    for block in all_blocks():
        if block.lang == "toml" and "[[upstream]]" in block.text:
            for table in tomllib.loads(block.text).get("upstream", []):
                assert set(table) <= known, block.where
