"""The data export: a zip of JSON files, one per collector; other services add collectors."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic_core import to_jsonable_python
from sqlalchemy.orm import Session

# A collector returns JSON-able data (or pydantic models) about one user.
Collector = Callable[[Session, str], Any]
EXPORT_FORMAT = "hutch-export/1"


class ExportRegistry:
    """Named collectors; each becomes `<name>.json` in the archive."""

    def __init__(self) -> None:
        self._collectors: dict[str, Collector] = {}

    def register(self, name: str, collector: Collector) -> None:
        """Add a collector (e.g. `usage`, `invoices`, `audit` from the services owning them)."""
        if not name.replace("_", "").isalnum() or name == "manifest":
            raise ValueError(f"export collector name {name!r} is not allowed")
        if name in self._collectors:
            raise ValueError(f"an export collector named {name!r} is already registered")
        self._collectors[name] = collector

    def names(self) -> list[str]:
        """Registered collector names, in archive order."""
        return list(self._collectors)

    def archive(self, session: Session, user_id: str, generated_at: datetime) -> bytes:
        """The zip archive for one user."""
        buf = io.BytesIO()
        files = []
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for name, collect in self._collectors.items():
                data = to_jsonable_python(collect(session, user_id))
                z.writestr(f"{name}.json", json.dumps(data, indent=2, sort_keys=True))
                files.append(f"{name}.json")
            manifest = {
                "format": EXPORT_FORMAT,
                "user_id": user_id,
                "generated_at": generated_at.isoformat(),
                "files": files,
            }
            z.writestr("manifest.json", json.dumps(manifest, indent=2))
        return buf.getvalue()
