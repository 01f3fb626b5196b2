"""Prefixed, sortable identifiers (`sbx_…`, `prj_…`, `key_…`, `usr_…`)."""

from __future__ import annotations

import re

from ulid import ULID

PREFIXES = ("sbx", "prj", "key", "usr", "team", "req", "inv", "grt", "evt", "sec", "aud")
_ID_RE = re.compile(r"^(?P<prefix>[a-z]{2,5})_(?P<ulid>[0-9a-hjkmnp-tv-z]{26})$")


def new_id(prefix: str) -> str:
    """Return a new identifier: prefix, underscore, lower-case ULID (time-sortable)."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}; allowed: {', '.join(PREFIXES)}")
    return f"{prefix}_{str(ULID()).lower()}"


def is_id(value: str, prefix: str | None = None) -> bool:
    """Tell whether `value` is a well-formed identifier (of the given prefix, if any)."""
    m = _ID_RE.match(value)
    if m is None:
        return False
    return prefix is None or m.group("prefix") == prefix
