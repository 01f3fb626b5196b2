"""The CLI's end-to-end tests use the same real server fixture as the SDK's."""

from tests.integration.sdk.conftest import api, hutch_server

__all__ = ["api", "hutch_server"]
