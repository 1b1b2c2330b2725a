"""Pure OCI Distribution rules: digests, names, media types, manifests and error codes.

Nothing in this package does I/O or imports aiohttp, storage or any other p2preg subpackage.
"""
