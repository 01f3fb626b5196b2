"""Settings from HUTCH_* environment variables (pydantic-settings)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RunnerSettings(BaseSettings):
    """The privileged runner: where it keeps state and how big sandboxes may be."""

    model_config = SettingsConfigDict(env_prefix="HUTCH_RUNNER_", extra="forbid")

    data_dir: Path = Field(default=Path("/var/lib/hutch"))
    socket: Path | None = Field(default=None, description="Default: DATA_DIR/runner.sock")
    template_dir: Path | None = Field(default=None, description="Default: DATA_DIR/templates")
    storage_size_gb: int = Field(default=64, ge=1, description="Sparse size of the disk pool")
    uid_base: int = Field(default=1_000_000, ge=100_000, description="First host uid given out")
    max_sandboxes: int = Field(default=4096, ge=1, le=60000)
    max_vcpu: int = Field(default=16, ge=1)
    max_memory_mb: int = Field(default=65536, ge=128)
    max_disk_mb: int = Field(default=262144, ge=64)
    heartbeat_s: float = Field(default=10.0, gt=0, le=15.0)
    cgroup_favor_dynmods: bool = Field(
        default=True,
        description="Hold a `favordynmods` cgroup hierarchy while the runner runs, so that "
        "moving a sandbox into its cgroups never waits for an RCU grace period (5-15 ms per "
        "create on an idle host); forks and exits host-wide then take a shared lock",
    )
    network_pool: str = Field(
        default="10.200.0.0/16",
        description="Private IPv4 range for sandbox links (a /30 per sandbox); "
        "must not overlap anything the host routes",
    )
    network_forbidden: list[str] = Field(
        default=["169.254.0.0/16", "100.100.100.200/32"],
        description="IPv4 ranges no sandbox may reach whatever its policy allows (cloud "
        "metadata services by default); the sandbox pool is always among them",
    )
    network_proxy_port: int = Field(default=15001, ge=1, le=65535)
    network_dns: str | None = Field(
        default=None,
        description="Upstream DNS server (`ip` or `ip:port`) for sandbox resolvers; "
        "default: the host's first nameserver",
    )

    def cgroup_parent(self) -> str:
        """This runner's own parent cgroup (`hutch-` + a hash of its data dir), so that two
        runners on one host never see, limit or clean each other's sandboxes."""
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:10]
        return f"hutch-{digest}"

    def network_tag(self) -> str:
        """Short per-runner tag naming its links and nftables table."""
        return self.cgroup_parent().removeprefix("hutch-")[:5]

    def templates_path(self) -> Path:
        """Where read-only template layers are built and cached."""
        return self.template_dir or self.data_dir / "templates"

    def socket_path(self) -> Path:
        """Where the runner listens."""
        return self.socket or self.data_dir / "runner.sock"


class Settings(BaseSettings):
    """The API server."""

    model_config = SettingsConfigDict(env_prefix="HUTCH_", extra="ignore")

    data_dir: Path = Field(default=Path("/var/lib/hutch"))
    database_url: str | None = Field(default=None, description="Default: SQLite in DATA_DIR")
    runner_socket: Path | None = Field(default=None, description="Default: DATA_DIR/runner.sock")
    host: str = "127.0.0.1"
    port: int = 8787
    max_concurrent_sandboxes: int = Field(default=100, ge=1)
    create_rate_per_minute: int = Field(default=600, ge=1)

    def db_url(self) -> str:
        """The database URL, defaulting to SQLite in the data directory."""
        return self.database_url or f"sqlite:///{self.data_dir / 'hutch.db'}"

    def runner_socket_path(self) -> Path:
        """Unix socket of the local runner."""
        return self.runner_socket or self.data_dir / "runner.sock"
