"""tlsconfig.server_context: serving a login over TLS, and clear errors for unusable files."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest

from p2preg.registry.auth import AuthPolicy, auth_middleware
from p2preg.registry.htpasswd import Htpasswd
from p2preg.tlsconfig import TLSConfigError, server_context
from tests.auth.certs import SelfSigned, make_self_signed
from tests.auth.conftest import REALM, USERS, basic
from tests.observability.tinyapp import TinyRegistry, serving


@pytest.fixture
def certificate(tmp_path: Path) -> SelfSigned:
    return make_self_signed(tmp_path / "tls")


async def test_a_login_works_over_tls_for_a_client_that_trusts_the_certificate(
    certificate: SelfSigned, htpasswd_path: Path
) -> None:
    policy = AuthPolicy(Htpasswd(htpasswd_path), realm=REALM)
    app = TinyRegistry(htpasswd_path).app([auth_middleware(policy)])
    context = server_context(certificate.cert, certificate.key)
    trusting = ssl.create_default_context(cafile=str(certificate.cert))
    async with serving(app, ssl_context=context) as base, aiohttp.ClientSession() as client:
        assert base.startswith("https://127.0.0.1:")
        async with client.get(f"{base}/v2/", ssl=trusting) as response:
            assert response.status == 401
        headers = basic("alice", USERS["alice"])
        async with client.get(f"{base}/v2/", ssl=trusting, headers=headers) as response:
            assert response.status == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with client.get(f"{base}/v2/", ssl=ssl.create_default_context()):
                pass


def test_the_context_refuses_tls_older_than_1_2(certificate: SelfSigned) -> None:
    context = server_context(certificate.cert, certificate.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE


def test_a_missing_file_is_named(certificate: SelfSigned, tmp_path: Path) -> None:
    with pytest.raises(
        TLSConfigError, match=f"TLS key file {tmp_path / 'nope.key'} does not exist"
    ):
        server_context(certificate.cert, tmp_path / "nope.key")


def test_a_key_that_does_not_match_the_certificate_is_refused(tmp_path: Path) -> None:
    first = make_self_signed(tmp_path / "a")
    second = make_self_signed(tmp_path / "b")
    with pytest.raises(
        TLSConfigError, match=r"cannot use TLS certificate .* with key .*KEY_VALUES_MISMATCH"
    ):
        server_context(first.cert, second.key)


def test_a_file_that_is_not_pem_is_refused(certificate: SelfSigned, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("this is not a certificate\n")
    with pytest.raises(TLSConfigError, match=f"cannot use TLS certificate {garbage}"):
        server_context(garbage, certificate.key)


def test_an_encrypted_key_is_refused_with_a_hint(certificate: SelfSigned, tmp_path: Path) -> None:
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(certificate.key), "-out", str(encrypted),
         "-aes256", "-passout", "pass:secret"],
        check=True, capture_output=True,
    )  # fmt: skip
    with pytest.raises(TLSConfigError, match="the key is encrypted; give an unencrypted PEM key"):
        server_context(certificate.cert, encrypted)
