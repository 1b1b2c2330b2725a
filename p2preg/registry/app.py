"""The /v2 application factory: routes, typed state and middleware order.

Owns: ``create_registry_app`` and ``add_routes`` (``RegistryContext`` and ``CONTEXT_KEY`` live in
``context`` and are re-exported here). Auth,
metrics and access logs are not implemented here: callers pass them as ``middlewares`` and they run
outside the error middleware, so they see the final status of every response (errors included).
Must not import the mirror, upstream, gossip or fetch packages.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware

from p2preg.registry.context import CONTEXT_KEY, RegistryContext
from p2preg.registry.errors import error_middleware
from p2preg.registry.handlers import blobs, catalog, manifests, referrers, uploads

__all__ = ["CONTEXT_KEY", "Middleware", "RegistryContext", "add_routes", "create_registry_app"]

# Repository names may contain "/" and even "blobs" or "manifests" components: ``.+`` is greedy,
# so the name takes every segment but the endpoint's own, and the handlers validate it strictly.
_NAME = "{name:.+}"


def create_registry_app(
    ctx: RegistryContext,
    *,
    middlewares: Sequence[Middleware] = (),
    client_max_size: int = 1 << 30,
) -> web.Application:
    """Build the /v2 application over ``ctx``.

    ``middlewares`` run first (outermost, in the order given), then the error middleware, then
    the handler. ``client_max_size`` only bounds bodies read whole (manifests are bounded by
    ``ctx.max_manifest_bytes``); blob bodies are streamed.
    """
    app = web.Application(
        middlewares=[*middlewares, error_middleware], client_max_size=client_max_size
    )
    app[CONTEXT_KEY] = ctx
    add_routes(app.router)
    return app


def add_routes(router: web.UrlDispatcher) -> None:
    """Register every /v2 route (named, so metrics can label requests by route)."""
    router.add_get("/v2/", catalog.version_check, name="v2")
    router.add_get("/v2", catalog.version_check, name="v2_noslash")
    router.add_route("GET", "/v2/_catalog", catalog.list_repositories, name="catalog")
    router.add_route("GET", f"/v2/{_NAME}/tags/list", catalog.list_tags, name="tags")

    manifest = router.add_resource(f"/v2/{_NAME}/manifests/{{reference}}", name="manifest")
    manifest.add_route("GET", manifests.get_manifest)
    manifest.add_route("HEAD", manifests.get_manifest)
    manifest.add_route("PUT", manifests.put_manifest)
    manifest.add_route("DELETE", manifests.delete_manifest)

    for suffix, name in (("/", "upload_start"), ("", "upload_start_noslash")):
        router.add_route(
            "POST", f"/v2/{_NAME}/blobs/uploads{suffix}", uploads.start_upload, name=name
        )

    upload = router.add_resource(f"/v2/{_NAME}/blobs/uploads/{{uuid}}", name="upload")
    upload.add_route("GET", uploads.upload_status)
    upload.add_route("PATCH", uploads.patch_upload)
    upload.add_route("PUT", uploads.finish_upload)
    upload.add_route("DELETE", uploads.cancel_upload)

    blob = router.add_resource(f"/v2/{_NAME}/blobs/{{digest}}", name="blob")
    blob.add_route("GET", blobs.get_blob)
    blob.add_route("HEAD", blobs.get_blob)
    blob.add_route("DELETE", blobs.delete_blob)

    router.add_route(
        "GET", f"/v2/{_NAME}/referrers/{{digest}}", referrers.list_referrers, name="referrers"
    )
