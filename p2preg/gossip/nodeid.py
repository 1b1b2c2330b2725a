"""The default node name: the host name plus a short random id kept in the data directory.

Owns: ``NODE_ID_FILE`` (``<data dir>/node-id``: 8 lowercase hex digits and a newline, written once
atomically), ``load_or_create_node_id`` and ``default_node_name``. Two nodes on hosts with the
same host name (cloned VMs, containers with a fixed hostname) get different names, and a node
keeps its name across restarts. ``--node-name`` replaces all of this. Must not import asyncio or
other p2preg packages.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from pathlib import Path

NODE_ID_FILE = "node-id"
NODE_ID_HEX_DIGITS = 8
_NODE_ID = re.compile(rf"[0-9a-f]{{{NODE_ID_HEX_DIGITS}}}")


class NodeIdError(ValueError):
    """The ``node-id`` file exists but is not what this module writes (message names it)."""


def load_or_create_node_id(data_dir: Path, *, token_hex: int = NODE_ID_HEX_DIGITS // 2) -> str:
    """The id kept in ``data_dir/node-id``, created (random, atomically) when missing."""
    path = data_dir / NODE_ID_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        raise NodeIdError(f"{path}: cannot read: {exc}") from None
    else:
        if not _NODE_ID.fullmatch(text):
            raise NodeIdError(f"{path}: expected {NODE_ID_HEX_DIGITS} hex digits; delete the file "
                              "to get a new id (the node's default name changes with it)")
        return text
    node_id = secrets.token_hex(token_hex)
    data_dir.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{NODE_ID_FILE}.{os.getpid()}.tmp")
    with open(temp, "w", encoding="ascii") as fh:
        fh.write(node_id + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(temp, path)  # never replaces an id another process wrote meanwhile
    except FileExistsError:
        return load_or_create_node_id(data_dir)
    finally:
        temp.unlink(missing_ok=True)
    return node_id


def default_node_name(data_dir: Path, hostname: str | None = None) -> str:
    """``<short host name>-<node id>``, e.g. ``worker-3-5f0c2a91``."""
    host = (hostname if hostname is not None else socket.gethostname()).split(".")[0]
    return f"{host or 'node'}-{load_or_create_node_id(data_dir)}"
