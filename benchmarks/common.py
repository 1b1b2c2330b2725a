"""Shared machinery for the benchmark scripts: blob files, curl-driven transfers, timing, reports.

Owns: ``write_blob_file`` (a deterministic large file and its digest, written in pieces),
``split_file``; the load client (``curl`` processes: ``curl_get_parallel``, ``curl_upload``),
``push_monolithic`` / ``push_chunked`` (OCI push protocol, curl carrying the bytes, urllib the
control requests); ``Sample`` / ``Series`` (repeated timings, medians); ``machine_info``; and
``write_results`` / ``update_docs_section`` (JSON results and a marked section of
``docs/benchmarks.md`` that the script rewrites without touching other sections).

The load client is curl (C, one process per concurrent client, ``-o /dev/null``), so it is not the
bottleneck on loopback and is the same for every registry compared.

Must not import p2preg: benchmarks drive nodes from the outside, as separate processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import re
import statistics
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
_PIECE_BYTES = 16 * MIB


class BenchmarkError(RuntimeError):
    """A transfer failed or answered an unexpected status: the run is invalid."""


# ------------------------------------------------------------------------------------------ files


def write_blob_file(path: Path, size_bytes: int, seed: int) -> str:
    """Write ``size_bytes`` seeded pseudo-random bytes to ``path``; return ``sha256:<hex>``."""
    rng = random.Random(seed)
    hasher = hashlib.sha256()
    with path.open("wb") as out:
        remaining = size_bytes
        while remaining:
            piece = rng.randbytes(min(_PIECE_BYTES, remaining))
            hasher.update(piece)
            out.write(piece)
            remaining -= len(piece)
    return "sha256:" + hasher.hexdigest()


def split_file(path: Path, chunk_bytes: int, out_dir: Path) -> list[Path]:
    """Copy ``path`` into consecutive chunk files of ``chunk_bytes`` (the last may be shorter)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    chunks: list[Path] = []
    size = path.stat().st_size
    with path.open("rb") as src:
        for number, offset in enumerate(range(0, size, chunk_bytes)):
            chunk_path = out_dir / f"chunk-{number:05d}"
            length = min(chunk_bytes, size - offset)
            with chunk_path.open("wb") as dst:
                copied = 0
                while copied < length:
                    copied += os.copy_file_range(
                        src.fileno(), dst.fileno(), length - copied, offset + copied
                    )
            chunks.append(chunk_path)
    return chunks


# ----------------------------------------------------------------------------------------- timing


@dataclass(frozen=True, slots=True)
class Sample:
    """One timed transfer (or set of concurrent transfers)."""

    seconds: float
    bytes: int

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MIB / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Series:
    """Repeated samples of one measurement against one target."""

    samples: list[Sample] = field(default_factory=list)

    @property
    def median_mb_per_s(self) -> float:
        return statistics.median(s.mb_per_s for s in self.samples) if self.samples else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "median_MiB_per_s": round(self.median_mb_per_s, 1),
            "runs_MiB_per_s": [round(s.mb_per_s, 1) for s in self.samples],
            "runs_s": [round(s.seconds, 3) for s in self.samples],
        }


# ----------------------------------------------------------------------------------- load client

_CURL_WRITE_OUT = "%{http_code} %{size_download} %{size_upload}\\n"


def _curl_argv(url: str, extra: Sequence[str] = ()) -> list[str]:
    # -H "Expect:": no 100-continue round trip; --no-keepalive irrelevant for one request.
    return [
        "curl", "--silent", "--show-error", "--globoff", "--noproxy", "*",
        "-H", "Expect:", "-o", "/dev/null", "-w", _CURL_WRITE_OUT, *extra, url,
    ]  # fmt: skip


def _parse_curl(output: str) -> tuple[int, int, int]:
    status, downloaded, uploaded = output.strip().split()
    return int(status), int(float(downloaded)), int(float(uploaded))


def curl_get_parallel(url: str, clients: int, expected_bytes: int) -> Sample:
    """``clients`` concurrent ``curl`` GETs of ``url``; wall time from first start to last end."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(_curl_argv(url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(clients)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    seconds = time.perf_counter() - start
    for proc, (out, err) in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise BenchmarkError(f"curl GET {url} failed: {err}")
        status, downloaded, _ = _parse_curl(out)
        if status != 200 or downloaded != expected_bytes:
            raise BenchmarkError(f"GET {url}: status {status}, {downloaded} bytes")
    return Sample(seconds=seconds, bytes=clients * expected_bytes)


def curl_upload(
    method: str, url: str, path: Path, headers: Mapping[str, str] | None = None
) -> tuple[int, int]:
    """Stream ``path`` as the body of ``method url`` with curl; returns (status, bytes sent)."""
    extra = ["-X", method, "-T", str(path)]
    for name, value in (headers or {}).items():
        extra += ["-H", f"{name}: {value}"]
    result = subprocess.run(
        _curl_argv(url, extra), capture_output=True, text=True, timeout=600, check=False
    )
    if result.returncode != 0:
        raise BenchmarkError(f"curl {method} {url} failed: {result.stderr}")
    status, _, uploaded = _parse_curl(result.stdout)
    return status, uploaded


def http_control(
    method: str, url: str, headers: Mapping[str, str] | None = None, data: bytes = b""
) -> tuple[int, dict[str, str]]:
    """A small control request (POST an upload, PUT with no body): status and lower-case headers."""
    request = urllib.request.Request(
        url, method=method, data=data if method in ("POST", "PUT", "PATCH") else None,
        headers=dict(headers or {}),
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}


def _with_query(base_url: str, location: str, **params: str) -> str:
    url = urllib.parse.urljoin(base_url + "/", location)
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _start_upload(base_url: str, repo: str) -> str:
    status, headers = http_control("POST", f"{base_url}/v2/{repo}/blobs/uploads/")
    if status != 202 or "location" not in headers:
        raise BenchmarkError(f"POST upload to {base_url}/{repo}: {status}")
    return headers["location"]


def push_monolithic(base_url: str, repo: str, path: Path, digest: str) -> Sample:
    """POST an upload, then PUT ``?digest=`` with the whole file as the body (timed: both)."""
    size = path.stat().st_size
    start = time.perf_counter()
    location = _start_upload(base_url, repo)
    status, sent = curl_upload(
        "PUT", _with_query(base_url, location, digest=digest), path,
        {"Content-Type": "application/octet-stream"},
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if status != 201 or sent != size:
        raise BenchmarkError(f"monolithic PUT to {base_url}/{repo}: {status}, sent {sent}")
    return Sample(seconds=seconds, bytes=size)


def push_chunked(base_url: str, repo: str, chunks: Sequence[Path], digest: str) -> Sample:
    """POST, one PATCH per chunk file with ``Content-Range``, then PUT ``?digest=`` (timed: all)."""
    start = time.perf_counter()
    location = _start_upload(base_url, repo)
    offset = 0
    for chunk in chunks:
        length = chunk.stat().st_size
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{offset + length - 1}",
        }
        url = urllib.parse.urljoin(base_url + "/", location)
        status, location = _patch(url, chunk, headers)
        if status != 202:
            raise BenchmarkError(f"PATCH {url}: {status}")
        offset += length
    status, _ = http_control(
        "PUT", _with_query(base_url, location, digest=digest), {"Content-Length": "0"}
    )
    seconds = time.perf_counter() - start
    if status != 201:
        raise BenchmarkError(f"closing PUT to {base_url}/{repo}: {status}")
    return Sample(seconds=seconds, bytes=offset)


def _patch(url: str, chunk: Path, headers: Mapping[str, str]) -> tuple[int, str]:
    """PATCH one chunk with curl, returning the status and the next ``Location``."""
    extra = ["-X", "PATCH", "-T", str(chunk), "-D", "-"]  # response headers on stdout
    for name, value in headers.items():
        extra += ["-H", f"{name}: {value}"]
    result = subprocess.run(
        _curl_argv(url, extra), capture_output=True, text=True, timeout=600, check=False
    )
    if result.returncode != 0:
        raise BenchmarkError(f"curl PATCH {url} failed: {result.stderr}")
    status, _, _ = _parse_curl(result.stdout.strip().rsplit("\n", 1)[-1])
    match = re.search(r"^location:\s*(\S+)\s*$", result.stdout, re.IGNORECASE | re.MULTILINE)
    if match is None:
        raise BenchmarkError(f"PATCH {url}: {status}, no Location in {result.stdout[:500]}")
    return status, match.group(1)


# ---------------------------------------------------------------------------------------- reports


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    curl_version = subprocess.run(
        ["curl", "--version"], capture_output=True, text=True, check=False
    ).stdout.split("\n", 1)[0]
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "curl": " ".join(curl_version.split()[:2]),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def write_results(path: Path, results: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


def update_docs_section(doc_path: Path, section: str, markdown: str) -> None:
    """Replace the text between ``<!-- section:begin -->`` and ``<!-- section:end -->`` in
    ``doc_path`` (appending the marked block if absent), leaving every other section alone."""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    text = doc_path.read_text() if doc_path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc_path.write_text(text)
