"""Python SDK: `Sandbox` and `AsyncSandbox`."""
