"""The htpasswd file: bcrypt only, clear start-up errors, hot reload, cached verification."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest

from p2preg.clock import FakeClock
from p2preg.registry.htpasswd import (
    Htpasswd,
    HtpasswdError,
    make_htpasswd_line,
    parse_htpasswd,
)
from tests.auth.conftest import USERS
from tests.conftest import require_tool


@pytest.fixture
def bcrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Spy on bcrypt checks (still delegating to the real bcrypt)."""
    calls: list[bytes] = []
    real: Callable[[bytes, bytes], bool] = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    return calls


def rewrite(path: Path, text: str, mtime_ns: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.mark.parametrize("prefix", ["$2y$", "$2b$", "$2a$"])
def test_every_bcrypt_prefix_is_accepted(prefix: str) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    entries = parse_htpasswd(f"carol:{prefix}{hashed[4:]}\n")
    assert list(entries) == ["carol"]


@pytest.mark.parametrize(
    ("hashed", "kind"),
    [
        ("$apr1$abcdefgh$0123456789abcdefghijkl", "an MD5 (apr1) hash"),
        ("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "a SHA-1 hash"),
        ("$6$salt$" + "x" * 86, "a SHA-crypt hash"),
        ("$2y$04$tooshort", "a malformed bcrypt hash"),
        ("plaintext-password", "not a bcrypt hash"),
    ],
)
def test_other_hashes_are_a_startup_error_naming_file_line_and_user(
    tmp_path: Path, hashed: str, kind: str
) -> None:
    path = tmp_path / "users"
    path.write_text(f"# comment\nmallory:{hashed}\n")
    with pytest.raises(HtpasswdError) as info:
        Htpasswd(path)
    message = str(info.value)
    assert message.startswith(f"{path} line 2 (user 'mallory'): {kind}; only bcrypt hashes")
    assert "htpasswd -B" in message
    assert hashed not in message


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("no-colon-here\n", "line 1: expected 'user:bcrypt-hash'"),
        (":$2y$04$" + "a" * 53 + "\n", "line 1: expected 'user:bcrypt-hash'"),
        (
            "dup:$2y$04${h}\ndup:$2y$04${h}\n".replace("{h}", "a" * 53),
            "line 2: user 'dup' appears twice",
        ),
    ],
)
def test_malformed_lines_are_rejected(text: str, error: str) -> None:
    with pytest.raises(HtpasswdError, match=error):
        parse_htpasswd(text)


def test_a_missing_file_is_a_clear_startup_error(tmp_path: Path) -> None:
    with pytest.raises(HtpasswdError, match=r"cannot read htpasswd file .*missing"):
        Htpasswd(tmp_path / "missing")


async def test_made_lines_look_like_htpasswd_b_and_verify(tmp_path: Path) -> None:
    line = make_htpasswd_line("carol", "correct horse", rounds=4)
    assert line.startswith("carol:$2y$04$") and len(line) == len("carol:") + 60
    path = tmp_path / "users"
    path.write_text(line + "\n")
    users = Htpasswd(path)
    assert await users.verify("carol", "correct horse")
    assert not await users.verify("carol", "correct horse ")


@pytest.mark.parametrize("user", ["", "a:b", "tab\there", " padded", "new\nline"])
def test_user_names_that_cannot_be_stored_are_refused(user: str) -> None:
    with pytest.raises(HtpasswdError, match="invalid user name"):
        make_htpasswd_line(user, "pw", rounds=4)


async def test_apache_htpasswd_and_p2preg_understand_each_other(tmp_path: Path) -> None:
    require_tool("htpasswd")
    apache_line = subprocess.run(
        ["htpasswd", "-nbB", "-C", "4", "dave", "from apache"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = make_htpasswd_line("erin", "from p2preg", rounds=4)
    path = tmp_path / "users"
    path.write_text(f"{apache_line}\n{ours}\n")
    users = Htpasswd(path)
    assert await users.verify("dave", "from apache")
    assert not await users.verify("dave", "from p2preg")
    verified = subprocess.run(
        ["htpasswd", "-vb", str(path), "erin", "from p2preg"], capture_output=True, text=True
    )
    assert verified.returncode == 0, verified.stderr
    refused = subprocess.run(
        ["htpasswd", "-vb", str(path), "erin", "wrong"], capture_output=True, text=True
    )
    assert refused.returncode != 0


async def test_only_the_first_72_password_bytes_count_as_in_bcrypt(tmp_path: Path) -> None:
    long_password = "p" * 72
    path = tmp_path / "users"
    path.write_text(make_htpasswd_line("frank", long_password, rounds=4) + "\n")
    users = Htpasswd(path)
    assert await users.verify("frank", long_password + "ignored tail")
    assert not await users.verify("frank", "p" * 71)


async def test_a_changed_file_is_reloaded_after_the_check_interval(htpasswd_path: Path) -> None:
    clock = FakeClock()
    users = Htpasswd(htpasswd_path, clock=clock, check_interval_s=1.0)
    assert await users.verify("alice", USERS["alice"])
    original_mtime = htpasswd_path.stat().st_mtime_ns
    rewrite(
        htpasswd_path,
        make_htpasswd_line("alice", "new password", rounds=4) + "\n",
        original_mtime + 1_000_000_000,
    )
    clock.advance(0.5)
    assert await users.verify("alice", USERS["alice"])  # not looked at yet
    assert users.reloads == 0
    clock.advance(0.5)
    assert await users.verify("alice", "new password")
    assert not await users.verify("alice", USERS["alice"])
    assert not await users.verify("bob", USERS["bob"])
    assert users.reloads == 1
    assert users.users == frozenset({"alice"})


async def test_a_broken_edit_keeps_the_last_good_users(
    htpasswd_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    users = Htpasswd(htpasswd_path, clock=clock, check_interval_s=1.0)
    rewrite(htpasswd_path, "alice:$apr1$x$y\n", htpasswd_path.stat().st_mtime_ns + 10**9)
    clock.advance(1.0)
    with caplog.at_level(logging.ERROR, logger="p2preg.registry.htpasswd"):
        assert await users.verify("alice", USERS["alice"])
    assert "htpasswd reload failed, keeping 2 users" in caplog.text
    assert users.reloads == 0


async def test_successful_checks_are_cached_and_failures_are_not(
    htpasswd_path: Path, bcrypt_calls: list[bytes]
) -> None:
    clock = FakeClock()
    users = Htpasswd(htpasswd_path, clock=clock, cache_ttl_s=60.0)
    for _ in range(3):
        assert await users.verify("alice", USERS["alice"])
    assert len(bcrypt_calls) == 1
    for _ in range(2):
        assert not await users.verify("alice", "guess")
    assert len(bcrypt_calls) == 3
    clock.advance(61.0)
    assert await users.verify("alice", USERS["alice"])
    assert len(bcrypt_calls) == 4


async def test_a_password_change_invalidates_the_cache_at_once(
    htpasswd_path: Path, bcrypt_calls: list[bytes]
) -> None:
    clock = FakeClock()
    users = Htpasswd(htpasswd_path, clock=clock, check_interval_s=1.0, cache_ttl_s=3600.0)
    assert await users.verify("alice", USERS["alice"])
    rewrite(
        htpasswd_path,
        make_htpasswd_line("alice", "rotated", rounds=4) + "\n",
        htpasswd_path.stat().st_mtime_ns + 10**9,
    )
    clock.advance(1.0)
    assert not await users.verify("alice", USERS["alice"])


async def test_an_unknown_user_costs_a_bcrypt_check_too(
    htpasswd_path: Path, bcrypt_calls: list[bytes]
) -> None:
    users = Htpasswd(htpasswd_path)
    assert not await users.verify("nobody", "anything")
    assert len(bcrypt_calls) == 1
