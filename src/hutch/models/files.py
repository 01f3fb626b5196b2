"""File-system models for the files API; every path is absolute inside the sandbox."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field, field_validator

from hutch.models.common import ExecUser, WireModel

MAX_PATH_BYTES = 4096


def check_sandbox_path(v: str) -> str:
    """A sandbox path must be absolute and free of NUL bytes; confinement is checked later."""
    if not v.startswith("/"):
        raise ValueError(f"path {v!r} must be absolute (start with '/')")
    if "\0" in v:
        raise ValueError("path contains a NUL byte")
    if len(v.encode()) > MAX_PATH_BYTES:
        raise ValueError(f"path is longer than {MAX_PATH_BYTES} bytes")
    return v


class FileType(StrEnum):
    """Kind of directory entry."""

    file = "file"
    dir = "dir"
    symlink = "symlink"
    other = "other"


class FileInfo(WireModel):
    """One entry of a sandbox's file system."""

    name: str
    path: str
    type: FileType
    size: int
    mode: int = Field(description="Permission bits, e.g. 0o644")
    uid: int
    gid: int
    mtime: datetime
    symlink_target: str | None = None


class WriteInfo(WireModel):
    """Result of an upload."""

    path: str
    size: int


class MakeDir(WireModel):
    """mkdir -p."""

    path: str
    user: ExecUser = ExecUser.user

    _check = field_validator("path")(check_sandbox_path)


class Rename(WireModel):
    """Move `src` to `dst` inside the sandbox."""

    src: str
    dst: str
    overwrite: bool = False

    _check = field_validator("src", "dst")(check_sandbox_path)


class Exists(WireModel):
    """Whether a path exists."""

    path: str
    exists: bool
