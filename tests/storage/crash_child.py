"""Child process of the SIGKILL test: recovers a store, then writes blobs and uploads forever.

Run as ``python -m tests.storage.crash_child ROOT SEED``. Prints ``ready`` after recovery and
``committed <digest>`` after each blob commit returns; the parent kills it with SIGKILL at a
moment of its choosing and checks the store it leaves behind.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from p2preg.clock import WallClock
from p2preg.oci.digest import Digest
from p2preg.oci.errors import RegistryError
from p2preg.storage.blobs import BlobStore
from p2preg.storage.layout import StoreLayout
from p2preg.storage.metadata import MetadataStore
from p2preg.storage.uploads import UploadManager

SIZES = (0, 1, 4_000, 70_000, 300_000, 1_200_000, 3_000_000)


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def main(root: Path, seed: int) -> None:
    rng = random.Random(seed)
    layout = StoreLayout(root)
    blobs = BlobStore(layout, flush_bytes=64 * 1024)
    meta = MetadataStore(layout.db_path)
    uploads = UploadManager(layout, blobs, meta, WallClock(), flush_bytes=64 * 1024)
    blobs.recover()
    uploads.recover()
    print("ready", flush=True)
    while True:
        data = rng.randbytes(rng.choice(SIZES))
        digest = Digest.of_bytes(data)
        lie = rng.random() < 0.15  # a client that sends other bytes than it announced
        claimed = Digest.of_bytes(data + b"!") if lie else digest
        try:
            if rng.random() < 0.5:
                async with blobs.writer(expected=claimed) as writer:
                    async for chunk in pieces(data, rng.randint(1_000, 200_000)):
                        await writer.write(chunk)
                    await writer.commit()
            else:
                record = uploads.create("crash/test")
                offset = 0
                for part in (data[: len(data) // 2], data[len(data) // 2 :]):
                    offset = await uploads.append(
                        "crash/test", record.uuid, pieces(part, 65_536), offset
                    )
                if rng.random() < 0.2:
                    continue  # an abandoned session, left for recovery to keep
                await uploads.finish("crash/test", record.uuid, claimed)
        except RegistryError:
            assert lie
            continue
        assert not lie
        print(f"committed {digest}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
