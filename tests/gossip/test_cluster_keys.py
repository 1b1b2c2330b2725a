"""Cluster key files: the formats the docs give (hex, base64), ``p2preg cluster-key``, errors.

The key-generation commands are run for real (``p2preg cluster-key`` as a child process, the
``head -c 32 /dev/urandom | base64`` that older deploy files told users to run) and their output
is loaded the way a node loads ``--cluster-key-file``.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import pytest

from p2preg.gossip.service import GossipConfigError, load_keyring
from p2preg.gossip.wire import Keyring, KeyringError, parse_key

ROOT = Path(__file__).resolve().parents[2]
KEY = bytes(range(32))


def test_hex_and_base64_keys_mix_in_one_file_with_comments() -> None:
    text = (
        "# rotated 2026-12\n"
        f"{base64.b64encode(KEY).decode()}\n"            # standard, padded (44 characters)
        "\n"
        f"{KEY[::-1].hex()}   # the old key, hex\n"
        f"{base64.urlsafe_b64encode(KEY[:16]).decode().rstrip('=')}\n"  # URL-safe, unpadded
    )
    ring = Keyring.from_text(text)
    assert ring.keys == (KEY, KEY[::-1], KEY[:16])
    assert ring.primary == KEY


def test_hex_wins_when_a_line_is_both_hex_and_base64() -> None:
    # 32 hex digits also decode as base64 (24 bytes); a key of hex digits is read as hex
    assert parse_key("ab" * 16) == bytes([0xAB]) * 16


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("not a key!", "neither hex nor base64"),
        ("s3cr3t%value", "neither hex nor base64"),
        ("QUJD", "16..64 bytes, got 3"),
        ("00" * 65, "16..64 bytes, got 65"),
        ("QUJD=x", "neither hex nor base64"),
    ],
)
def test_a_bad_key_says_why_and_which_line_without_printing_the_key(
    tmp_path: Path, line: str, complaint: str
) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# comment\n{KEY.hex()}\n{line}\n")
    with pytest.raises(GossipConfigError, match=complaint) as info:
        load_keyring(str(path))
    message = str(info.value)
    assert "line 3" in message and str(path) in message
    assert line not in message and KEY.hex() not in message


def test_a_key_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(KeyringError, match=r"16\.\.64 bytes"):
        parse_key(base64.b64encode(b"x" * 8).decode())


def _run(command: str) -> str:
    done = subprocess.run(command, shell=True, check=True, capture_output=True, text=True,
                          timeout=60)
    return done.stdout


def test_p2preg_cluster_key_prints_one_new_32_byte_key_that_a_node_loads(tmp_path: Path) -> None:
    first = _run(f"{sys.executable} -m p2preg cluster-key")
    second = _run(f"{sys.executable} -m p2preg cluster-key")
    assert re.fullmatch(r"[0-9a-f]{64}\n", first)
    assert first != second
    path = tmp_path / "cluster.keys"
    path.write_text(first)
    ring = load_keyring(str(path))
    assert ring is not None and ring.primary == bytes.fromhex(first.strip())


def test_the_base64_command_of_older_deploy_files_makes_a_key_a_node_loads(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cluster.keys"
    path.write_text(_run("head -c 32 /dev/urandom | base64"))
    ring = load_keyring(str(path))
    assert ring is not None and len(ring.primary) == 32


def test_every_key_command_in_the_docs_and_deploy_files_makes_a_loadable_key_file(
    tmp_path: Path,
) -> None:
    """Each place that tells users how to make a key names ``p2preg cluster-key``; running the
    command lines as written (with the file name swapped for a temporary one) gives a key file a
    node loads."""
    places = [ROOT / "deploy" / "kubernetes" / "p2preg.yaml", ROOT / "docs" / "p2p.md",
              ROOT / "docs" / "discovery.md", ROOT / "deploy" / "p2preg.toml"]
    commands: list[str] = []
    for place in places:
        text = place.read_text()
        found = re.findall(r"p2preg cluster-key(?: *> *[^\s`]+)?", text)
        assert found, f"{place.relative_to(ROOT)} does not say how to make a cluster key"
        commands.extend(found)
    for i, command in enumerate(sorted(set(commands))):
        target = tmp_path / f"keys{i}"
        line = re.sub(r">\s*\S+", f"> {target}", command) if ">" in command \
            else f"{command} > {target}"
        _run(line.replace("p2preg ", f"{sys.executable} -m p2preg ", 1))
        assert load_keyring(str(target)) is not None
