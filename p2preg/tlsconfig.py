"""TLS for the node's HTTP server: an ``ssl.SSLContext`` built from PEM certificate and key files.

Owns: ``server_context``, ``client_context`` (how a node verifies its peers' HTTPS) and
``TLSConfigError``. The context is a server-side default context
(``Purpose.CLIENT_AUTH``) with TLS 1.2 as the floor; the certificate file may hold the whole
chain (leaf first). Every way the files can be wrong (missing, unreadable, not PEM, key not
matching the certificate, encrypted key) becomes a ``TLSConfigError`` whose message names the
files, raised at start-up rather than at the first handshake.

Must not import aiohttp or other p2preg modules.
"""

from __future__ import annotations

import ssl
from pathlib import Path


class TLSConfigError(ValueError):
    """The TLS certificate or key cannot be used; the message says which and why."""


def server_context(
    cert: Path | str, key: Path | str, *, client_ca: Path | str | None = None
) -> ssl.SSLContext:
    """A server ``SSLContext`` serving ``cert`` with ``key``.

    ``client_ca`` turns on mutual TLS: clients must present a certificate signed by it.
    """
    cert_path, key_path = Path(cert), Path(key)
    for label, path in (("certificate", cert_path), ("key", key_path)):
        if not path.is_file():
            raise TLSConfigError(f"TLS {label} file {path} does not exist or is not a file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_path, key_path, password=_refuse_password)
    except (ssl.SSLError, OSError, _EncryptedKey) as exc:
        raise TLSConfigError(
            f"cannot use TLS certificate {cert_path} with key {key_path}: {_reason(exc)}"
        ) from exc
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except (ssl.SSLError, OSError) as exc:
            raise TLSConfigError(f"cannot load client CA {client_ca}: {_reason(exc)}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _EncryptedKey(Exception):
    pass


def _refuse_password() -> str:
    raise _EncryptedKey("the key is encrypted; give an unencrypted PEM key")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{exc.reason} ({exc.library or 'ssl'})"
    return str(exc) or type(exc).__name__


def client_context(ca: Path | str | None = None) -> ssl.SSLContext:
    """A client ``SSLContext`` that verifies servers against ``ca`` (a PEM bundle), or against
    the system store when ``ca`` is None; TLS 1.2 at least, host names checked."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        try:
            context.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError) as exc:
            raise TLSConfigError(f"cannot use CA bundle {ca}: {_reason(exc)}") from exc
    return context
