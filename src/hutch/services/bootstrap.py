"""First start on an empty database: an admin user, a default team and project, and a key."""

from __future__ import annotations

import os
from pathlib import Path

from hutch.db.session import Database
from hutch.models.api import Mode, Scope
from hutch.services.accounts import AccountService
from hutch.services.keys import KeyService

ADMIN_EMAIL = "admin@localhost"


def write_secret(path: Path, content: str) -> None:
    """Write a file only its owner can read (0600 from the moment it exists)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(content + "\n")


def ensure_admin(
    db: Database, accounts: AccountService, keys: KeyService, data_dir: Path
) -> Path | None:
    """On an empty database create the first owner and write their key to `DATA_DIR/admin-key`.

    Returns the key file's path when it was created, None when users already existed.
    """
    with db.session() as s:
        if accounts.has_users(s):
            return None
        user_id, project_id = accounts.bootstrap_owner(s, email=ADMIN_EMAIL, name="admin")
        _, raw = keys.issue(
            s,
            user_id=user_id,
            project_id=project_id,
            name="admin",
            mode=Mode.live,
            scopes=frozenset(Scope),
        )
        path = data_dir / "admin-key"
        # The file is written before the commit: a failure to write leaves no unusable admin.
        write_secret(path, raw)
        s.commit()
    return path
