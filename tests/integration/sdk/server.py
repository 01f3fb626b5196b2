"""The end-to-end server (kept as an import path; the code lives in tests/support/server.py)."""

from tests.support.server import Server, external, free_port, start_server

__all__ = ["Server", "external", "free_port", "start_server"]
