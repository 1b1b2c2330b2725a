"""``signed_json``: a signed peer or operator request gives back a JSON object or a
``SignedClientError``, never another JSON value a caller would call ``.get`` on."""

from __future__ import annotations

import random

import aiohttp
import pytest
from aiohttp import web

from p2preg.gossip.wire import Keyring
from p2preg.operate.signing import SignedClientError, signed_json
from p2preg.p2p.auth import RequestSigner


@pytest.mark.parametrize(("text", "ok"), [
    ('{"state": "done"}', True), ("[1, 2]", False), ('"done"', False), ("null", False),
    ("{nope", False),
])
async def test_only_a_json_object_is_an_answer(text: str, ok: bool) -> None:
    async def answer(_: web.Request) -> web.Response:
        return web.Response(text=text, content_type="application/json")

    app = web.Application()
    app.router.add_get("/x", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    signer = RequestSigner(Keyring([bytes(32)]), rng=random.Random(1))
    try:
        async with aiohttp.ClientSession() as session:
            call = signed_json(session, signer, "GET", f"http://127.0.0.1:{port}", "/x",
                               sender="n1")
            if ok:
                assert await call == {"state": "done"}
            else:
                with pytest.raises(SignedClientError) as refused:
                    await call
                assert refused.value.status == 0
    finally:
        await runner.cleanup()
