"""Client for origin registries (Docker Hub, ghcr.io, a private registry, a p2preg origin).

Owns: per-registry upstream configuration and credentials (``config``), the Bearer/Basic challenge
flow with a per-scope token cache (``auth``) and the HTTP client for manifests and blobs with
redirects, retries and timeouts (``client``). Must not import storage, registry, gossip or fetch.
"""
