"""The Great Expectations suites (JSON), package data read with ``importlib.resources``."""
