"""Fixtures for the login tests: an htpasswd file with fast (cost 4) bcrypt entries."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2preg.registry.htpasswd import make_htpasswd_line
from tests.observability.tinyapp import AccessLines, capture_access_lines

USERS = {"alice": "wonderland", "bob": "hunter2"}
REALM = "p2preg-test"


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def htpasswd_path(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    lines = [make_htpasswd_line(user, password, rounds=4) for user, password in USERS.items()]
    path.write_text("# registry users\n\n" + "\n".join(lines) + "\n")
    return path


@pytest.fixture
def access_lines() -> Iterator[AccessLines]:
    with capture_access_lines() as handler:
        yield handler
