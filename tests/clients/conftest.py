"""Fixtures for the real-client tests: a running p2preg node and built test images.

Owns nothing but fixture wiring; the machinery lives in ``tests/support``.
"""

from __future__ import annotations

from tests.support.node import p2preg_node

__all__ = ["p2preg_node"]
