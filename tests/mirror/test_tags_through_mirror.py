"""Tag lists and the catalog in mirror mode (fake upstream; real clients: test_real_clients.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from p2preg.registry.mirrorlists import TagListStore, client_name
from tests.mirror.conftest import MirrorFactory
from tests.mirror.test_pull_through import add_image, pull
from tests.upstream.fakes import FakeUpstream

TAGS = ["1.0", "1.1", "2.0", "latest", "v3"]


def add_tags(fake: FakeUpstream, repo: str, tags: list[str]) -> None:
    for seed, tag in enumerate(tags):
        add_image(fake, repo, tag, seed=seed, layer_sizes=(10,))


def outage(fake: FakeUpstream, suffix: str = "tags/list", answers: int = 50) -> None:
    fake.script[suffix] = [(503, {})] * answers


async def test_tags_list_passes_through_to_docker_hub_by_default(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    add_tags(fake_upstream, "library/busybox", TAGS)
    node = await mirror_factory({"docker.io": fake_upstream.url})
    reply = await node.request("GET", "/v2/library/busybox/tags/list")
    assert reply.status == 200, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")


    assert json.loads(reply.body) == {"name": "library/busybox", "tags": TAGS}
    assert "Link" not in reply.headers
    assert fake_upstream.count("GET", "list") == 1


async def test_tags_list_with_ns_asks_that_registry(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    other = FakeUpstream()
    await other.start()
    try:
        add_tags(fake_upstream, "org/app", ["hub"])
        add_tags(other, "org/app", ["ghcr-a", "ghcr-b"])
        node = await mirror_factory({"docker.io": fake_upstream.url, "ghcr.io": other.url})
        reply = await node.request("GET", "/v2/org/app/tags/list?ns=ghcr.io")
        assert reply.status == 200
        assert reply.body and b"ghcr-a" in reply.body and b"hub" not in reply.body
        podman_style = await node.request("GET", "/v2/ghcr.io/org/app/tags/list")
        assert podman_style.status == 200
        assert b"ghcr-b" in podman_style.body
    finally:
        await other.stop()


async def test_pagination_passes_n_and_last_and_rewrites_link_to_the_node(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    add_tags(fake_upstream, "org/app", TAGS)
    node = await mirror_factory({"docker.io": fake_upstream.url, "quay.io": fake_upstream.url})
    seen: list[str] = []
    path = "/v2/org/app/tags/list?n=2&ns=quay.io"
    pages = 0
    while path:
        reply = await node.request("GET", path)
        assert reply.status == 200
        import json

        seen += json.loads(reply.body)["tags"]
        pages += 1
        link = reply.headers.get("Link")
        if link is None:
            break
        target, _, rel = link.partition(";")
        assert rel.strip() == 'rel="next"'
        path = target.strip().removeprefix("<").removesuffix(">")
        # The link points at the node, under the client's name, keeping ns: never upstream.
        assert path.startswith("/v2/org/app/tags/list?")
        assert "ns=quay.io" in path and "n=2" in path
    assert seen == TAGS
    assert pages == 3
    queries = [r.query for r in fake_upstream.requests if r.path.endswith("/tags/list")]
    assert queries == ["n=2", "n=2&last=1.1", "n=2&last=latest"]


async def test_an_unknown_repository_upstream_is_name_unknown(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    node = await mirror_factory({"docker.io": fake_upstream.url})
    reply = await node.request("GET", "/v2/library/nothing/tags/list")
    assert reply.status == 404
    assert reply.error_codes() == ["NAME_UNKNOWN"]


async def test_upstream_down_serves_the_last_known_list_and_says_so(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    add_tags(fake_upstream, "library/busybox", TAGS)
    node = await mirror_factory({"docker.io": fake_upstream.url})
    assert (await node.request("GET", "/v2/library/busybox/tags/list")).status == 200
    outage(fake_upstream)
    caplog.set_level(logging.WARNING)
    reply = await node.request("GET", "/v2/library/busybox/tags/list?n=3")
    assert reply.status == 200


    assert json.loads(reply.body)["tags"] == TAGS[:3]
    assert reply.headers["Warning"] == '110 p2preg "Response is Stale"'
    assert reply.headers["P2preg-Last-Confirmed"].endswith("GMT")
    assert reply.headers["Link"] == '</v2/library/busybox/tags/list?n=3&last=2.0>; rel="next"'
    assert node.metric("p2preg_stale_tags_served_total", source="tag_list") == 1
    assert any("last known tag list" in r.getMessage() for r in caplog.records)


async def test_the_last_known_list_survives_a_restart(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    add_tags(fake_upstream, "library/busybox", TAGS)
    node = await mirror_factory({"docker.io": fake_upstream.url})
    assert (await node.request("GET", "/v2/library/busybox/tags/list")).status == 200
    # A fresh store object over the same directory (what a restarted node opens) has the list.
    store = TagListStore(tmp_path / "mirror0" / "taglists")
    known = store.load("docker.io/library/busybox")
    assert known is not None
    assert known.tags == TAGS
    assert known.confirmed_at == node.wall.now()


async def test_upstream_down_with_no_list_stored_falls_back_to_the_cached_tags(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    image = add_image(fake_upstream, "library/app", "cached")
    add_image(fake_upstream, "library/app", "never-pulled", seed=9)
    node = await mirror_factory({"docker.io": fake_upstream.url})
    await pull(node, image)
    outage(fake_upstream)
    reply = await node.request("GET", "/v2/library/app/tags/list")
    assert reply.status == 200


    assert json.loads(reply.body)["tags"] == ["cached"]
    assert reply.headers["Warning"] == '110 p2preg "Response is Stale"'
    assert "P2preg-Last-Confirmed" not in reply.headers  # unknown: never listed upstream


async def test_upstream_down_and_nothing_known_is_an_error_not_an_empty_list(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    node = await mirror_factory({"docker.io": fake_upstream.url})
    outage(fake_upstream)
    reply = await node.request("GET", "/v2/library/app/tags/list")
    assert reply.status == 503
    assert reply.error_codes() == ["UNAVAILABLE"]


def test_a_page_replaces_exactly_the_range_it_covers(tmp_path: Path) -> None:
    store = TagListStore(tmp_path)
    store.merge_page("r/x", None, ["a", "b", "c", "d"], True, 1.0)
    # A later middle page: "b" is gone upstream, "bb" is new; "a" and "d" are outside the page.
    known = store.merge_page("r/x", "a", ["bb", "c"], False, 2.0)
    assert known.tags == ["a", "bb", "c", "d"]
    # The last page: everything after "c" is what the upstream says.
    known = store.merge_page("r/x", "c", ["e"], True, 3.0)
    assert known.tags == ["a", "bb", "c", "e"]
    # An empty last page after "a" empties the rest.
    assert store.merge_page("r/x", "a", [], True, 4.0).tags == ["a"]
    assert store.load("r/x") is not None


def test_a_corrupt_stored_list_is_treated_as_absent(tmp_path: Path) -> None:
    store = TagListStore(tmp_path)
    store.merge_page("r/x", None, ["a"], True, 1.0)
    for path in tmp_path.iterdir():
        path.write_text("{not json")
    assert store.load("r/x") is None


# -- _catalog in mirror mode ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cache_repo", "namespace", "expected"),
    [
        ("docker.io/library/busybox", None, "library/busybox"),
        ("docker.io/library/busybox", "docker.io", "library/busybox"),
        ("docker.io/library/busybox", "index.docker.io", "library/busybox"),
        ("docker.io/library/busybox", "ghcr.io", None),
        ("ghcr.io/org/app", None, "ghcr.io/org/app"),
        ("ghcr.io/org/app", "ghcr.io", "org/app"),
        ("127.0.0.1__5056/org/app", None, None),  # a port: only reachable with ?ns=
        ("127.0.0.1__5056/org/app", "127.0.0.1:5056", "org/app"),
    ],
)
def test_client_names_of_cached_repositories(
    cache_repo: str, namespace: str | None, expected: str | None
) -> None:
    assert client_name(cache_repo, namespace) == expected


async def test_catalog_lists_the_cache_in_client_names(
    mirror_factory: MirrorFactory, fake_upstream: FakeUpstream
) -> None:
    images = [add_image(fake_upstream, repo, "v1", seed=i)
              for i, repo in enumerate(["library/busybox", "library/alpine", "org/app"])]
    node = await mirror_factory({"docker.io": fake_upstream.url, "ghcr.io": fake_upstream.url})
    await pull(node, images[0])
    await pull(node, images[1])
    await pull(node, images[2], ns="ghcr.io")


    everything = await node.request("GET", "/v2/_catalog")
    assert json.loads(everything.body) == {
        "repositories": ["ghcr.io/org/app", "library/alpine", "library/busybox"]
    }
    ghcr = await node.request("GET", "/v2/_catalog?ns=ghcr.io")
    assert json.loads(ghcr.body) == {"repositories": ["org/app"]}
    first = await node.request("GET", "/v2/_catalog?n=1")
    assert json.loads(first.body) == {"repositories": ["ghcr.io/org/app"]}
    assert first.headers["Link"] == '</v2/_catalog?n=1&last=ghcr.io%2Forg%2Fapp>; rel="next"'
    second = await node.request("GET", "/v2/_catalog?n=1&last=ghcr.io/org/app")
    assert json.loads(second.body) == {"repositories": ["library/alpine"]}
