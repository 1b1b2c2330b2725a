"""A whole node, as ``p2preg serve`` runs it: wiring, start/stop, signals, the data-dir lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from p2preg.config import Config
from p2preg.node import Node
from p2preg.storage.lock import DataDirLocked


async def test_registry_node_serves_v2_metrics_and_health(tmp_path: Path) -> None:
    node = Node(Config(mode="registry", listen="127.0.0.1:0", data_dir=str(tmp_path)))
    await node.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(node.url + "/v2/") as response:
                assert response.status == 200
                assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
            async with http.post(node.url + "/v2/a/b/blobs/uploads/?digest=sha256:"
                                 "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
                                 data=b"hello") as response:
                assert response.status == 201
            async with http.get(node.url + "/v2/a/b/blobs/sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e"
                                "1b161e5c1fa7425e73043362938b9824") as response:
                assert await response.read() == b"hello"
            async with http.get(node.url + "/healthz") as response:
                assert response.status == 200
            async with http.get(node.url + "/metrics") as response:
                text = await response.text()
        assert 'p2preg_blob_bytes_served_total{source="local"} 5.0' in text
        assert "p2preg_store_blobs 1.0" in text
    finally:
        await node.stop()


async def test_second_node_on_same_data_dir_refuses_to_start(tmp_path: Path) -> None:
    first = Node(Config(mode="registry", listen="127.0.0.1:0", data_dir=str(tmp_path)))
    await first.start()
    try:
        second = Node(Config(mode="registry", listen="127.0.0.1:0", data_dir=str(tmp_path)))
        with pytest.raises(DataDirLocked):
            await second.start()
        await second.stop()
    finally:
        await first.stop()


def test_serve_logs_listening_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2preg", "serve", "--mode", "registry", "--listen",
         "127.0.0.1:0", "--data-dir", str(tmp_path)],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "P2PREG_LOG_LEVEL": "info"},
    )
    try:
        assert proc.stderr is not None
        url = None
        for line in proc.stderr:
            record = json.loads(line)
            if record.get("event") == "listening":
                url = record["url"]
                break
        assert url is not None and url.startswith("http://127.0.0.1:")
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=20) == 0
        assert '"event": "stopped"' in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_configuration_exits_2_with_a_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "p2preg", "serve", "--listen", "nonsense", "--data-dir",
         str(tmp_path)], capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "--listen" in result.stderr


async def test_nodes_with_gossip_see_each_other_and_members_cli_prints_them(
    tmp_path: Path,
) -> None:
    import asyncio

    def config(name: str, join: tuple[str, ...]) -> Config:
        return Config(mode="registry", listen="127.0.0.1:0", data_dir=str(tmp_path / name),
                      gossip_listen="127.0.0.1:0", join=join, node_name=name)

    first = Node(config("alpha", ()))
    await first.start()
    second = None
    try:
        host, port = first.gossip.bound_address[:2]
        second = Node(config("beta", (f"{host}:{port}",)))
        await second.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        async with aiohttp.ClientSession() as http:
            while True:
                async with http.get(first.url + "/p2p/v1/members") as response:
                    doc = await response.json()
                alive = {m["name"] for m in doc["members"] if m["status"] == "alive"}
                if alive == {"alpha", "beta"}:
                    break
                assert loop.time() < deadline, doc
                await asyncio.sleep(0.05)
        beta = next(m for m in doc["members"] if m["name"] == "beta")
        assert beta["advertise"] == second.url.removeprefix("http://")
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "p2preg", "members", "--node", first.url],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "alpha" in result.stdout and "beta" in result.stdout and "alive" in result.stdout
    finally:
        if second is not None:
            await second.stop()
        await first.stop()


def test_members_cli_reports_an_unreachable_node_cleanly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "p2preg", "members", "--node", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("p2preg: ")
    assert "Traceback" not in result.stderr
