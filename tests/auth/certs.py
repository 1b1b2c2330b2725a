"""Self-signed certificates for the TLS tests, made with the ``openssl`` command."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import require_tool


@dataclass(frozen=True)
class SelfSigned:
    cert: Path
    key: Path


def make_self_signed(directory: Path, name: str = "server") -> SelfSigned:
    """An EC P-256 certificate for 127.0.0.1 (IP SAN), valid for two days."""
    require_tool("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return SelfSigned(cert, key)
