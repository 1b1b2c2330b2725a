"""The /v2 HTTP API of a node: app factory, handlers, error JSON, auth and observability.

Package face only (no imports here, so importing one module does not pull in the others):
``app.create_registry_app`` builds the application over a ``context.RegistryContext``.
Must not import the gossip package or the node.
"""
