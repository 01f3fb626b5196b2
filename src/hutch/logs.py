"""Structured logging set-up (structlog, JSON lines on stderr).

Call sites log identifiers, sizes, codes and durations only: never request bodies, command
arguments, file contents, environment values or key material.
"""

from __future__ import annotations

import logging
import sys

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def log_level(name: str) -> int:
    """`debug`, `info`, `warning` or `error` (any case) as a logging level."""
    try:
        return LEVELS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown log level {name!r}; allowed: {', '.join(LEVELS)}") from None


def configure_logging(level: int | str = logging.INFO) -> None:
    """JSON logs to stderr, at `level` and above (for our loggers and the libraries')."""
    if isinstance(level, str):
        level = log_level(level)
    logging.basicConfig(stream=sys.stderr, level=level, format="%(message)s")
    logging.getLogger().setLevel(level)  # also when something configured logging before us
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
