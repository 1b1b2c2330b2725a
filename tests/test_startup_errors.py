"""Every start-up failure an operator can cause is one line, exit status 2, no traceback.

The line is ``p2preg: configuration error: <option> (<source>): <what> — <fix>`` (docs/
configuration.md, "Errors"). Each case runs ``p2preg serve`` as a real process, as an operator
would, and plants a secret where the case can reach one: it must not be printed.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.auth.certs import make_self_signed
from tests.support.serve import run_serve

PLANTED = "PLANTED-S3CRET-7f3a9c"
LINE = re.compile(
    r"^p2preg: configuration error: (?P<option>.+?) \((?P<source>[^()]+)\): (?P<what>.+?)"
    r" — (?P<fix>.+)$"
)


@dataclass(frozen=True)
class Case:
    name: str
    option: str  # the option the line must name
    source: str  # a prefix of the source it must name
    setup: Callable[[Path], tuple[list[str], dict[str, str]]]  # tmp dir -> (argv, extra env)


def _toml(tmp: Path, text: str) -> Path:
    path = tmp / "p2preg.toml"
    path.write_text(text)
    return path


def _cfg(text: str) -> Callable[[Path], tuple[list[str], dict[str, str]]]:
    def setup(tmp: Path) -> tuple[list[str], dict[str, str]]:
        return ["--config", str(_toml(tmp, text))], {}
    return setup


def _flags(*argv: str, env: dict[str, str] | None = None
           ) -> Callable[[Path], tuple[list[str], dict[str, str]]]:
    def setup(tmp: Path) -> tuple[list[str], dict[str, str]]:
        return [a.replace("TMP", str(tmp)) for a in argv], dict(env or {})
    return setup


def _file_flag(flag: str, content: str, *extra: str
               ) -> Callable[[Path], tuple[list[str], dict[str, str]]]:
    def setup(tmp: Path) -> tuple[list[str], dict[str, str]]:
        path = tmp / "the-file"
        path.write_text(content)
        return [flag, str(path), *extra], {}
    return setup


def _tls(kind: str) -> Callable[[Path], tuple[list[str], dict[str, str]]]:
    def setup(tmp: Path) -> tuple[list[str], dict[str, str]]:
        pair = make_self_signed(tmp / "a")
        cert, key = pair.cert, pair.key
        if kind == "missing":
            cert = tmp / "nope.crt"
        elif kind == "mismatch":
            key = make_self_signed(tmp / "b").key
        elif kind == "not-pem":
            cert = tmp / "garbage.crt"
            cert.write_text("not a certificate\n")
        elif kind == "encrypted":
            key = tmp / "encrypted.key"
            subprocess.run(["openssl", "pkey", "-in", str(pair.key), "-out", str(key),
                            "-aes256", "-passout", f"pass:{PLANTED}"], check=True,
                           capture_output=True)
        elif kind == "alone":
            return ["--tls-cert", str(cert)], {}
        return ["--tls-cert", str(cert), "--tls-key", str(key)], {}
    return setup


UPSTREAM_TABLE = f'''
[[upstream]]
registry = "docker.io"
url = "ftp://nope"
username = "me"
password = "{PLANTED}"
'''

CASES = [
    Case("toml-syntax", "--config", "file", _cfg('listen = "127.0.0.1:0\n')),
    Case("toml-unknown-key", "lisen", "file", _cfg('lisen = "127.0.0.1:0"\n')),
    Case("toml-wrong-type", "--manifest-max-bytes", "file", _cfg("manifest_max_bytes = 1.5\n")),
    Case("upstream-table-inline-password", "[[upstream]] #1", "file", _cfg(UPSTREAM_TABLE)),
    Case("upstream-table-missing-password-file", "[[upstream]] #1.password_file", "file", _cfg(
        '[[upstream]]\nregistry = "docker.io"\nurl = "https://r"\nusername = "me"\n'
        'password_file = "missing-token"\n')),
    Case("upstream-flag-with-userinfo", "--upstream", "",
         _flags("--upstream", f"docker.io=https://me:{PLANTED}@r.example")),
    Case("flag-bad-listen", "--listen", "flag", _flags("--listen", "nowhere")),
    Case("env-bad-boolean", "--anonymous-read", "env P2PREG_ANONYMOUS_READ",
         _flags(env={"P2PREG_ANONYMOUS_READ": "maybe"})),
    Case("htpasswd-md5", "--htpasswd", "flag",
         _file_flag("--htpasswd", "alice:$apr1$9sCz7Ytp$dl3aT1WxkuLkEPLy/y3c4/\n")),
    Case("htpasswd-missing", "--htpasswd", "flag", _flags("--htpasswd", "TMP/none")),
    Case("tls-cert-missing", "--tls-cert", "flag", _tls("missing")),
    Case("tls-key-mismatch", "--tls-cert", "flag", _tls("mismatch")),
    Case("tls-cert-not-pem", "--tls-cert", "flag", _tls("not-pem")),
    Case("tls-key-encrypted", "--tls-cert", "flag", _tls("encrypted")),
    Case("tls-cert-without-key", "--tls-key", "default", _tls("alone")),
    Case("peer-ca-missing", "--peer-ca", "flag", _flags("--peer-ca", "TMP/none.pem")),
    Case("upstream-ca-missing", "--upstream-ca", "flag", _flags("--upstream-ca", "TMP/none.pem")),
    Case("upstream-ca-not-pem", "--upstream-ca", "flag",
         _file_flag("--upstream-ca", "not a certificate\n")),
    Case("cluster-key-not-hex", "--cluster-key-file", "flag",
         _file_flag("--cluster-key-file", f"{PLANTED}\n", "--gossip-listen", "127.0.0.1:0")),
    Case("cluster-key-missing", "--cluster-key-file", "flag",
         _flags("--cluster-key-file", "TMP/none.key", "--gossip-listen", "127.0.0.1:0")),
    Case("gossip-wildcard-without-address", "--gossip-listen", "flag",
         _flags("--gossip-listen", "0.0.0.0:0")),
    Case("gc-interval-below-maintenance", "--gc-interval-s", "flag",
         _flags("--mode", "registry", "--gc-interval-s", "10")),
    Case("data-dir-in-use", "--data-dir", "flag", _flags()),  # locked by the test, below
    Case("data-dir-not-a-directory", "--data-dir", "flag", _flags()),  # a file, below
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_startup_mistake_is_one_line_with_exit_status_2(case: Case, tmp_path: Path) -> None:
    argv, env = case.setup(tmp_path)
    data_dir = tmp_path / "data"
    if case.name == "data-dir-in-use":
        from p2preg.storage.layout import StoreLayout
        from p2preg.storage.lock import DataDirLock

        layout = StoreLayout(data_dir)
        layout.ensure()
        lock = DataDirLock(layout)
        lock.acquire()  # a second node on the same data dir: this test process is the first
        try:
            done = run_serve(tmp_path, argv, env, data_dir)
        finally:
            lock.release()
    elif case.name == "data-dir-not-a-directory":
        (tmp_path / "a-file").write_text("")
        done = run_serve(tmp_path, argv, env, tmp_path / "a-file" / "data")
    else:
        done = run_serve(tmp_path, argv, env, data_dir)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    match = LINE.match(lines[0])
    assert match, lines[0]
    assert match["option"] == case.option, lines[0]
    assert match["source"].startswith(case.source), lines[0]
    assert PLANTED not in done.stderr + done.stdout
