"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol, for page tests.

Owns ``chromium_page`` (start a browser on 127.0.0.1 only, open one page, yield a ``Page``, stop
the browser by its PID) and ``Page`` (navigate, evaluate JavaScript, take a PNG screenshot, and
every console error, uncaught exception and failed load the page produced). The DevTools client
is a few lines over aiohttp websockets: commands by id, events kept in order.

The browser may reach nothing but loopback: every host name resolves to nothing except
127.0.0.1, and background networking (updates, sync, metrics, default apps) is off.

Must not import p2preg.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.daemons import ManagedProcess, remove_tree, short_tempdir

CHROMIUM = "chromium"
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--disable-domain-reliability",
    "--disable-breakpad", "--metrics-recording-only", "--password-store=basic",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
    "--window-size=1280,1000",
)  # fmt: skip
START_DEADLINE_S = 30.0


class Page:
    """One browser tab over a DevTools websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self._waiting:
                self._waiting.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.append(data)
        for future in self._waiting.values():
            future.set_exception(ConnectionError("DevTools connection closed"))

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[self._next_id] = future
        await self._ws.send_str(json.dumps({"id": self._next_id, "method": method,
                                            "params": params}))
        answer = await asyncio.wait_for(future, 30)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, deadline_s: float = 20.0) -> Any:
        """Evaluate ``expression`` until it is truthy (bounded); return its value."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            assert loop.time() < end, f"page never satisfied: {expression}"
            await asyncio.sleep(0.1)

    async def navigate(self, url: str, deadline_s: float = 20.0) -> None:
        """Open ``url`` and wait (bounded) for its load event."""
        seen = len(self.events)
        await self.call("Page.navigate", url=url)
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        while not any(e["method"] == "Page.loadEventFired" for e in self.events[seen:]):
            assert loop.time() < end, f"{url} did not load"
            await asyncio.sleep(0.05)

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads, as text."""
        out = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                  for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                out.append("exception: " + str(details.get("exception", {}).get(
                    "description", details.get("text"))))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                out.append(f"log: {entry.get('text')} {entry.get('url', '')}")
        return out

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._ws.close()


async def _devtools_port(user_data: Path, process: ManagedProcess) -> int:
    active = user_data / "DevToolsActivePort"
    loop = asyncio.get_running_loop()
    end = loop.time() + START_DEADLINE_S
    while not (active.exists() and active.read_text().strip()):
        if not process.alive or loop.time() > end:
            raise RuntimeError(f"chromium did not start:\n{process.log_text()[-2000:]}")
        await asyncio.sleep(0.05)
    return int(active.read_text().splitlines()[0])


@contextlib.asynccontextmanager
async def chromium_page() -> AsyncIterator[Page]:
    """A headless Chromium with one blank page, console and log events enabled."""
    base = short_tempdir("p2p-chromium-")
    user_data = base / "profile"
    process = ManagedProcess([CHROMIUM, *FLAGS, f"--user-data-dir={user_data}", "about:blank"],
                             base / "chromium.log", env={**os.environ, "HOME": str(base)})
    try:
        port = await _devtools_port(user_data, process)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            target = next(t for t in targets if t.get("type") == "page")
            ws = await http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 << 20)
            page = Page(ws)
            try:
                for domain in ("Page", "Runtime", "Log"):
                    await page.call(f"{domain}.enable")
                yield page
            finally:
                await page.close()
    finally:
        process.stop()
        remove_tree(base)
