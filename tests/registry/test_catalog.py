"""Tags list and _catalog: lexical order, pagination with n and last, the Link header."""

from __future__ import annotations

import pytest

from tests.registry.conftest import RegistryNode
from tests.registry.helpers import assert_oci_error, push_blob, push_image

TAGS = ["a", "B", "b", "latest", "v1", "v1.0", "v10", "v2"]


@pytest.fixture
async def tagged(registry: RegistryNode) -> RegistryNode:
    """A registry whose lib/app holds one manifest under every tag in ``TAGS``."""
    _, body = await push_image(registry, "lib/app", TAGS[0])
    for tag in TAGS[1:]:
        response = await registry.request(
            "PUT",
            f"/v2/lib/app/manifests/{tag}",
            data=body,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert response.status == 201
    return registry


async def test_tags_list_returns_every_tag_in_lexical_order(tagged: RegistryNode) -> None:
    response = await tagged.request("GET", "/v2/lib/app/tags/list")
    assert response.status == 200
    assert response.json() == {"name": "lib/app", "tags": sorted(TAGS)}
    assert "Link" not in response.headers


async def test_n_limits_the_page_and_link_points_at_the_next(tagged: RegistryNode) -> None:
    expected = sorted(TAGS)
    response = await tagged.request("GET", "/v2/lib/app/tags/list?n=3")
    assert response.json()["tags"] == expected[:3]
    assert response.headers["Link"] == f'</v2/lib/app/tags/list?n=3&last={expected[2]}>; rel="next"'


async def test_following_links_walks_the_whole_list_exactly_once(tagged: RegistryNode) -> None:
    seen: list[str] = []
    path = "/v2/lib/app/tags/list?n=3"
    while True:
        response = await tagged.request("GET", path)
        seen.extend(response.json()["tags"])
        link = response.headers.get("Link")
        if link is None:
            break
        path = link[1 : link.index(">")]
    assert seen == sorted(TAGS)


async def test_last_starts_after_the_given_tag(tagged: RegistryNode) -> None:
    response = await tagged.request("GET", "/v2/lib/app/tags/list?last=v1")
    assert response.json()["tags"] == ["v1.0", "v10", "v2"]
    response = await tagged.request("GET", "/v2/lib/app/tags/list?n=1&last=v1")
    assert response.json()["tags"] == ["v1.0"]
    assert "Link" in response.headers


@pytest.mark.parametrize(
    ("query", "tags", "link"),
    [
        ("n=0", [], False),
        ("n=8", sorted(TAGS), False),
        ("n=100", sorted(TAGS), False),
        ("last=v2", [], False),
        ("last=zzz", [], False),
        ("n=2&last=v2", [], False),
        ("n=7", sorted(TAGS)[:7], True),
    ],
)
async def test_pagination_edges(
    tagged: RegistryNode, query: str, tags: list[str], link: bool
) -> None:
    response = await tagged.request("GET", f"/v2/lib/app/tags/list?{query}")
    assert response.status == 200
    assert response.json()["tags"] == tags
    assert ("Link" in response.headers) is link


@pytest.mark.parametrize("n", ["-1", "abc", "1.5", "", "99999999999999999999", "²"])
async def test_a_bad_n_is_pagination_number_invalid(registry: RegistryNode, n: str) -> None:
    await push_image(registry, "lib/app", "v1")
    response = await registry.request("GET", f"/v2/lib/app/tags/list?n={n}")
    assert_oci_error(response, 400, "PAGINATION_NUMBER_INVALID")
    response = await registry.request("GET", f"/v2/_catalog?n={n}")
    assert_oci_error(response, 400, "PAGINATION_NUMBER_INVALID")


async def test_tags_of_an_unknown_repository_is_name_unknown(registry: RegistryNode) -> None:
    assert_oci_error(await registry.request("GET", "/v2/lib/none/tags/list"), 404, "NAME_UNKNOWN")


async def test_a_repository_with_only_blobs_has_an_empty_tag_list(registry: RegistryNode) -> None:
    await push_blob(registry, "lib/blobs-only", b"data")
    response = await registry.request("GET", "/v2/lib/blobs-only/tags/list")
    assert response.json() == {"name": "lib/blobs-only", "tags": []}


async def test_catalog_lists_repositories_in_order_with_pagination(
    registry: RegistryNode,
) -> None:
    names = ["zeta", "alpha/one", "alpha/two", "beta", "alpha"]
    for name in names:
        await push_blob(registry, name, b"x")
    response = await registry.request("GET", "/v2/_catalog")
    assert response.json() == {"repositories": sorted(names)}
    assert "Link" not in response.headers
    page = await registry.request("GET", "/v2/_catalog?n=2")
    assert page.json() == {"repositories": ["alpha", "alpha/one"]}
    assert page.headers["Link"] == '</v2/_catalog?n=2&last=alpha%2Fone>; rel="next"'
    rest = await registry.request("GET", "/v2/_catalog?n=10&last=alpha/one")
    assert rest.json() == {"repositories": ["alpha/two", "beta", "zeta"]}
    assert "Link" not in rest.headers
    empty = await registry.request("GET", "/v2/_catalog?n=0")
    assert empty.json() == {"repositories": []}
    assert "Link" not in empty.headers


async def test_catalog_of_an_empty_registry(registry: RegistryNode) -> None:
    response = await registry.request("GET", "/v2/_catalog")
    assert response.json() == {"repositories": []}
