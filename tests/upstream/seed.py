"""Push blobs and manifests to a real registry over its HTTP API (test helper, aiohttp only).

Owns: ``push_blob``, ``push_manifest`` and ``push_simple_image`` (a config + layers + manifest),
used to seed a Distribution origin without starting skopeo. Test-only code.
"""

from __future__ import annotations

import hashlib
import json

import aiohttp

from p2preg.oci import mediatypes


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def push_blob(session: aiohttp.ClientSession, base: str, repo: str, data: bytes) -> str:
    digest = digest_of(data)
    async with session.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
        assert resp.status == 202, await resp.text()
        location = resp.headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    async with session.put(f"{location}{sep}digest={digest}", data=data,
                           headers={"Content-Type": "application/octet-stream"}) as resp:
        assert resp.status == 201, await resp.text()
    return digest


async def push_manifest(
    session: aiohttp.ClientSession, base: str, repo: str, ref: str, body: bytes, media_type: str
) -> str:
    async with session.put(f"{base}/v2/{repo}/manifests/{ref}", data=body,
                           headers={"Content-Type": media_type}) as resp:
        assert resp.status == 201, await resp.text()
    return digest_of(body)


async def push_simple_image(
    base: str, repo: str, tag: str, layers: list[bytes], *, config: bytes = b"{}"
) -> tuple[str, bytes, list[str]]:
    """Push an OCI image; returns (manifest digest, manifest body, [config, *layer digests])."""
    async with aiohttp.ClientSession() as session:
        config_digest = await push_blob(session, base, repo, config)
        layer_digests = [await push_blob(session, base, repo, data) for data in layers]
        manifest = {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_MANIFEST,
            "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": config_digest,
                       "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": d, "size": len(data)}
                       for d, data in zip(layer_digests, layers, strict=True)],
        }
        body = json.dumps(manifest).encode()
        digest = await push_manifest(session, base, repo, tag, body, mediatypes.OCI_MANIFEST)
    return digest, body, [config_digest, *layer_digests]
