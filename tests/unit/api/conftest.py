"""Fixtures for API tests: an app on each test database, a small world of tenants, and a real
runner behind the app (started on first use; tests that create sandboxes need root)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import structlog
from fastapi import FastAPI
from fastapi.testclient import TestClient

from hutch.api.app import create_app
from hutch.api.deps import Services
from hutch.api.settings import ApiSettings
from hutch.db.models import MemberRow, ProjectRow, TeamRow, UserRow
from hutch.db.session import Database
from hutch.ids import new_id
from hutch.models.api import Mode, Role
from hutch.services.clock import FakeClock
from hutch.services.permissions import role_scopes
from hutch.services.ratelimit import TokenBucket
from tests.support.live_runner import LiveRunner

T = TypeVar("T")
PEPPER = "test-pepper-0123456789abcdef0123456789"


@dataclass(frozen=True)
class Who:
    """A user with one API key."""

    user_id: str
    key_id: str
    key: str
    role: Role | None

    @property
    def h(self) -> dict[str, str]:
        """Authorization header for this key."""
        return {"Authorization": f"Bearer {self.key}"}


@dataclass(frozen=True)
class World:
    """Team A (one user per role, project A) and team B (an owner, project B)."""

    team_id: str
    project_id: str
    other_team_id: str
    other_project_id: str
    users: dict[str, Who]

    def __getattr__(self, name: str) -> Who:
        try:
            return self.users[name]
        except KeyError:
            raise AttributeError(name) from None


def add_user(
    svc: Services,
    team_id: str,
    project_id: str,
    role: Role,
    *,
    admin: bool = False,
    mode: Mode = Mode.live,
    user_id: str | None = None,
) -> Who:
    """A user (or a further key of an existing user) with a key whose scopes fill its role."""
    now = svc.clock.now()
    with svc.db.session() as s:
        if user_id is None:
            user_id = new_id("usr")
            s.add(
                UserRow(
                    id=user_id,
                    email=f"{user_id}@example.test",
                    name=role.value,
                    is_admin=admin,
                    created_at=now,
                )
            )
            s.flush()
            s.add(MemberRow(team_id=team_id, user_id=user_id, role=role.value, created_at=now))
        row, raw = svc.keys.issue(
            s,
            user_id=user_id,
            project_id=project_id,
            name=role.value,
            mode=mode,
            scopes=role_scopes(role, is_admin=admin),
        )
        s.commit()
        return Who(user_id, row.id, raw, role)


def build_world(svc: Services) -> World:
    """Create both teams through the database (fast, and independent of the routes under test)."""
    now = svc.clock.now()
    ids = {"a": (new_id("team"), new_id("prj")), "b": (new_id("team"), new_id("prj"))}
    with svc.db.session() as s:
        for name, (team_id, project_id) in ids.items():
            s.add(TeamRow(id=team_id, name=f"team-{name}", created_at=now))
            s.flush()
            s.add(
                ProjectRow(id=project_id, team_id=team_id, name=f"project-{name}", created_at=now)
            )
        s.commit()
    (ta, pa), (tb, pb) = ids["a"], ids["b"]
    users = {r.value: add_user(svc, ta, pa, r) for r in Role}
    users["other"] = add_user(svc, tb, pb, Role.owner)
    users["test"] = add_user(
        svc, ta, pa, Role.owner, mode=Mode.test, user_id=users["owner"].user_id
    )
    users["root"] = add_user(svc, ta, pa, Role.owner, admin=True)
    return World(ta, pa, tb, pb, users)


@dataclass
class AppEnv:
    """An app kept for the whole session (FastAPI builds each route's state on its first request,
    which costs far more than a test), with the parts tests reach into."""

    app: FastAPI
    runner: LiveRunner
    clock: FakeClock


def _settings(database: Database, data_dir: Path, **overrides: Any) -> ApiSettings:
    return ApiSettings(data_dir=data_dir, key_pepper=PEPPER, database_url=database.url, **overrides)


@pytest.fixture(scope="session")
def live_runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRunner]:
    """One real runner for the session (its process starts when a test first needs it)."""
    runner = LiveRunner(tmp_path_factory.mktemp("runner") / "r")
    yield runner
    runner.stop()


@pytest.fixture(scope="session")
def _app_env(
    _shared_database: Database, live_runner: LiveRunner, tmp_path_factory: pytest.TempPathFactory
) -> AppEnv:
    clock = FakeClock()
    settings = _settings(_shared_database, tmp_path_factory.mktemp("data"))
    app = create_app(
        settings, runner=live_runner, clock=clock, database=_shared_database, background=False
    )
    return AppEnv(app, live_runner, clock)


@pytest.fixture
def app(_app_env: AppEnv, database: Database) -> FastAPI:
    """The app with default settings, its state reset (the `database` fixture empties tables)."""
    _app_env.runner.clean()
    _app_env.clock.set(datetime.now(UTC).replace(microsecond=0))
    svc: Services = _app_env.app.state.services
    svc.sandboxes.limiter = TokenBucket(svc.settings.create_rate_per_minute, svc.clock)
    svc.sandboxes.inflight.clear()
    svc.sandboxes.live.clear()
    svc.auth_cache.clear()
    return _app_env.app


@pytest.fixture
def runner(app: FastAPI, _app_env: AppEnv) -> LiveRunner:
    """The runner behind the app."""
    return _app_env.runner


@pytest.fixture
def clock(app: FastAPI, _app_env: AppEnv) -> FakeClock:
    """The services' clock (moves only when a test says so)."""
    return _app_env.clock


AppFactory = Callable[..., FastAPI]


@pytest.fixture
def make_app(database: Database, live_runner: LiveRunner, tmp_path: Path) -> Iterator[AppFactory]:
    """A new app with its own clock on the session's runner; keyword arguments override settings."""

    def make(**overrides: Any) -> FastAPI:
        clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
        return create_app(
            _settings(database, tmp_path / "data", **overrides),
            runner=live_runner,
            clock=clock,
            database=database,
            background=False,
        )

    yield make
    live_runner.clean()


@pytest.fixture
def svc(app: FastAPI) -> Services:
    """The app's services."""
    services: Services = app.state.services
    return services


class Client:
    """A synchronous in-process client on a private event loop in the test's own thread.

    Starlette's TestClient hops threads several times per request; on a 2-core machine that
    costs more than the request itself. The database is migrated by the session fixture, and
    the app runs no background tasks in these tests, so no lifespan is needed here.
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://hutch.test"
        )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the app's loop (e.g. a service call)."""
        return self.loop.run_until_complete(coro)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request."""
        return self.run(self.http.request(method, url, **kwargs))

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)

    def put(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("PUT", url, **kw)

    def patch(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("PATCH", url, **kw)

    def delete(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", url, **kw)

    def close(self) -> None:
        runner = self.app.state.services.runner
        if runner is not None:
            self.run(runner.aclose())  # its connections on this loop
        self.run(self.http.aclose())
        self.loop.close()


@pytest.fixture
def client(app: FastAPI) -> Iterator[Client]:
    """An in-process HTTP client."""
    c = Client(app)
    yield c
    c.close()


@pytest.fixture
def ws_client(app: FastAPI) -> Iterator[TestClient]:
    """Starlette's TestClient, for WebSocket routes (runs the app's start-up too)."""
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def world(svc: Services) -> World:
    """Two teams of users with keys."""
    return build_world(svc)


@pytest.fixture(autouse=True, scope="session")
def _json_logs() -> None:
    """Render logs as JSON lines on stdout (the server's format; the console renderer is slow)."""
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(),
        cache_logger_on_first_use=False,
    )
