"""A minimal OCI push client over aiohttp, spelled out step by step for the crash tests.

Owns: ``UploadSession`` (POST, PATCH chunks with ``Content-Range``, status GET, PUT ``?digest=``),
``push_blob`` (monolithic POST then PUT) and ``put_manifest``. Every step asserts the status the
OCI distribution spec requires, so a wrong answer fails the test where it happens.

Must not import p2preg: it speaks HTTP to a node running in another process.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import aiohttp
from yarl import URL

OCTET_STREAM = "application/octet-stream"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class UploadSession:
    """One blob upload session on a node; ``location`` is absolute and follows the node."""

    session: aiohttp.ClientSession
    base_url: str
    location: str
    offset: int = 0

    @classmethod
    async def start(cls, session: aiohttp.ClientSession, base_url: str, repo: str) -> UploadSession:
        async with session.post(f"{base_url}/v2/{repo}/blobs/uploads/") as response:
            assert response.status == 202, await response.text()
            location = _absolute(base_url, response.headers["Location"])
        return cls(session=session, base_url=base_url, location=location)

    async def patch(self, chunk: bytes) -> None:
        """Send one chunk at the current offset; the node must acknowledge all bytes so far."""
        end = self.offset + len(chunk) - 1
        headers = {
            "Content-Type": OCTET_STREAM,
            "Content-Range": f"{self.offset}-{end}",
            "Content-Length": str(len(chunk)),
        }
        async with self.session.patch(self.location, data=chunk, headers=headers) as response:
            assert response.status == 202, await response.text()
            assert response.headers.get("Range") == f"0-{end}"
            self.location = _absolute(self.base_url, response.headers["Location"])
        self.offset = end + 1

    async def status(self) -> tuple[int, str | None]:
        """``GET`` the upload: the status and the ``Range`` header (``None`` if absent)."""
        async with self.session.get(self.location) as response:
            await response.read()
            return response.status, response.headers.get("Range")

    async def finish(self, digest: str) -> str:
        """``PUT ?digest=`` with no body; returns the ``Docker-Content-Digest`` answered."""
        url = URL(self.location).update_query({"digest": digest})
        headers = {"Content-Type": OCTET_STREAM, "Content-Length": "0"}
        async with self.session.put(url, headers=headers) as response:
            assert response.status == 201, await response.text()
            return response.headers["Docker-Content-Digest"]

    def rebase(self, base_url: str) -> None:
        """Point the session at the same node restarted on another port."""
        old = URL(self.location)
        new_base = URL(base_url)
        self.location = str(old.with_host(new_base.host or "").with_port(new_base.port))
        self.base_url = base_url


async def push_blob(session: aiohttp.ClientSession, base_url: str, repo: str, data: bytes) -> str:
    """Monolithic push (POST, then PUT ``?digest=`` with the body); returns the digest."""
    digest = sha256_digest(data)
    upload = await UploadSession.start(session, base_url, repo)
    url = URL(upload.location).update_query({"digest": digest})
    headers = {"Content-Type": OCTET_STREAM, "Content-Length": str(len(data))}
    async with session.put(url, data=data, headers=headers) as response:
        assert response.status == 201, await response.text()
    return digest


async def put_manifest(
    session: aiohttp.ClientSession,
    base_url: str,
    repo: str,
    reference: str,
    body: bytes,
    media_type: str,
) -> str:
    """PUT a manifest; returns the ``Docker-Content-Digest`` the node answered."""
    headers = {"Content-Type": media_type}
    url = f"{base_url}/v2/{repo}/manifests/{reference}"
    async with session.put(url, data=body, headers=headers) as response:
        assert response.status == 201, await response.text()
        return response.headers["Docker-Content-Digest"]


async def get_bytes(
    session: aiohttp.ClientSession, url: str, accept: str | None = None
) -> tuple[int, bytes]:
    """GET ``url``; the status and the complete body."""
    headers = {"Accept": accept} if accept else {}
    async with session.get(url, headers=headers) as response:
        return response.status, await response.read()


def _absolute(base_url: str, location: str) -> str:
    return str(URL(base_url).join(URL(location)))
