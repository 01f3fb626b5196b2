"""Fixtures for API tests: an app on each test database, and a small world of tenants."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
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
from tests.unit.api.fake_runner import InMemoryRunner

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


def add_user(svc: Services, team_id: str, project_id: str, role: Role, *, admin: bool = False,
             mode: Mode = Mode.live, user_id: str | None = None) -> Who:
    """A user (or a further key of an existing user) with a key whose scopes fill its role."""
    now = svc.clock.now()
    with svc.db.session() as s:
        if user_id is None:
            user_id = new_id("usr")
            s.add(UserRow(id=user_id, email=f"{user_id}@example.test", name=role.value,
                          is_admin=admin, created_at=now))
            s.flush()
            s.add(MemberRow(team_id=team_id, user_id=user_id, role=role.value, created_at=now))
        row, raw = svc.keys.issue(s, user_id=user_id, project_id=project_id, name=role.value,
                                  mode=mode, scopes=role_scopes(role, is_admin=admin))
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
            s.add(ProjectRow(id=project_id, team_id=team_id, name=f"project-{name}", created_at=now))
        s.commit()
    (ta, pa), (tb, pb) = ids["a"], ids["b"]
    users = {r.value: add_user(svc, ta, pa, r) for r in Role}
    users["other"] = add_user(svc, tb, pb, Role.owner)
    users["test"] = add_user(svc, ta, pa, Role.owner, mode=Mode.test,
                             user_id=users["owner"].user_id)
    users["root"] = add_user(svc, ta, pa, Role.owner, admin=True)
    return World(ta, pa, tb, pb, users)


@pytest.fixture
def runner() -> InMemoryRunner:
    """The runner behind the app."""
    return InMemoryRunner()


@pytest.fixture
def clock() -> FakeClock:
    """The services' clock (moves only when a test says so)."""
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


AppFactory = Callable[..., FastAPI]


@pytest.fixture
def make_app(database: Database, runner: InMemoryRunner, clock: FakeClock,
             tmp_path: Path) -> AppFactory:
    """Build an app on the test database; keyword arguments override settings."""

    def make(**overrides: Any) -> FastAPI:
        settings = ApiSettings(data_dir=tmp_path / "data", key_pepper=PEPPER,
                               database_url=database.url, **overrides)
        return create_app(settings, runner=runner, clock=clock, database=database,
                          background=False)

    return make


@pytest.fixture
def app(make_app: AppFactory) -> FastAPI:
    """The app with default settings."""
    return make_app()


@pytest.fixture
def svc(app: FastAPI) -> Services:
    """The app's services."""
    services: Services = app.state.services
    return services


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """An in-process HTTP client (runs the app's start-up, i.e. migrations)."""
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def world(client: TestClient, svc: Services) -> World:
    """Two teams of users with keys."""
    return build_world(svc)
