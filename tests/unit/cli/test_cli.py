"""The CLI's argument handling, error reporting and offline output, through typer's runner."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import termios
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import typer
from typer.testing import CliRunner

from hutch.cli import _common as c
from hutch.cli.main import app
from hutch.cli.sandbox import command_string
from hutch.cli.terminal import WinchFlag, raw_mode, terminal_size
from hutch.sdk.exceptions import HutchSDKError

# Nothing listens on port 1: any command that reached the network would fail to connect.
NOWHERE = ["--api-url", "http://127.0.0.1:1", "--api-key", "sk_test_x"]


@contextlib.contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A local HTTP server answering with `handler`, for as long as the block runs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("HUTCH_API_URL", raising=False)
    monkeypatch.delenv("HUTCH_API_KEY", raising=False)
    return CliRunner()


def test_every_group_is_registered(run: CliRunner) -> None:
    out = run.invoke(app, ["--help"]).output
    for group in ("sandbox", "keys", "template", "projects", "users", "me"):
        assert group in out
    sandbox = run.invoke(app, ["sandbox", "--help"]).output
    for cmd in ("create", "ls", "info", "exec", "shell", "cp", "kill"):
        assert cmd in sandbox


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("sbx_01abc:/home/user/f.txt", c.Location("/home/user/f.txt", "sbx_01abc")),
        ("sbx_01abc:/", c.Location("/", "sbx_01abc")),
        ("./a:/b", c.Location("./a:/b")),
        ("/abs/path", c.Location("/abs/path")),
        ("relative.txt", c.Location("relative.txt")),
    ],
)
def test_locations(arg: str, expected: c.Location) -> None:
    assert c.parse_location(arg) == expected


def test_sandbox_paths_must_be_absolute() -> None:
    with pytest.raises(typer.BadParameter, match="absolute"):
        c.parse_location("sbx_01abc:tmp/x")


def test_cp_needs_exactly_one_sandbox_side(run: CliRunner) -> None:
    r = run.invoke(app, ["sandbox", "cp", "a.txt", "b.txt", *NOWHERE])
    assert r.exit_code == 2 and "exactly one" in r.output
    r = run.invoke(app, ["sandbox", "cp", "sbx_a:/x", "sbx_b:/y", *NOWHERE])
    assert r.exit_code == 2 and "exactly one" in r.output


def test_key_value_options_are_checked(run: CliRunner) -> None:
    r = run.invoke(app, ["sandbox", "create", "--env", "NOEQUALS", *NOWHERE])
    assert r.exit_code == 2 and "KEY=VALUE" in r.output
    assert c.parse_kv(["A=1", "B=x=y", "C="], "--env") == {"A": "1", "B": "x=y", "C": ""}


def test_invalid_sizes_fail_before_any_request(run: CliRunner) -> None:
    r = run.invoke(app, ["sandbox", "create", "--vcpu", "99", *NOWHERE])
    assert r.exit_code == 2
    assert "vcpu" in r.output and "16" in r.output


def test_invalid_sizes_as_json(run: CliRunner) -> None:
    r = run.invoke(app, ["sandbox", "create", "--memory-mb", "1", "--json", *NOWHERE])
    assert r.exit_code == 2
    err = json.loads(r.stderr)["error"]
    assert err["code"] == "invalid_request" and "memory_mb" in err["detail"]


def test_unreachable_api_is_a_clear_error(run: CliRunner) -> None:
    r = run.invoke(app, ["sandbox", "info", "sbx_x", *NOWHERE])
    assert r.exit_code == 1
    assert "cannot reach the Hutch API at http://127.0.0.1:1" in r.stderr
    r = run.invoke(app, ["keys", "ls", "--json", *NOWHERE])
    assert r.exit_code == 1
    assert set(json.loads(r.stderr)["error"]) == {"code", "status", "detail", "errors"}


def test_api_url_from_environment_is_validated(run: CliRunner) -> None:
    r = run.invoke(app, ["me"], env={"HUTCH_API_URL": "ftp://nope"})
    assert r.exit_code == 2 and "http://" in r.output


@pytest.fixture
def stub_api() -> Iterator[tuple[str, list[tuple[str, str, str]]]]:
    """A loopback stand-in for the API: answers every request with a small JSON object and
    records (method, path, Authorization header)."""
    seen: list[tuple[str, str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(self) -> None:
            seen.append((self.command, self.path, self.headers.get("authorization") or ""))
            self.rfile.read(int(self.headers.get("content-length") or 0))
            body = json.dumps({"user_id": "usr_x", "objections": []}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_DELETE = _answer

    with _serving(Handler) as url:
        yield url, seen


def test_me_passes_its_options_on_to_its_subcommands(
    run: CliRunner, stub_api: tuple[str, list[tuple[str, str, str]]]
) -> None:
    url, seen = stub_api
    env = {"HUTCH_API_URL": "http://127.0.0.1:1", "HUTCH_API_KEY": "sk_test_env"}
    group = ["me", "--api-url", url, "--api-key", "sk_test_group"]
    r = run.invoke(app, [*group, "restrict"], env=env)
    assert r.exit_code == 0, r.output
    assert seen[-1] == ("PUT", "/v1/me/restriction", "Bearer sk_test_group")
    # The subcommand's own options win over the group's.
    r = run.invoke(app, [*group, "restrict", "--lift", "--api-key", "sk_test_own"], env=env)
    assert r.exit_code == 0, r.output
    assert seen[-1] == ("DELETE", "/v1/me/restriction", "Bearer sk_test_own")
    # Without a subcommand the group's options were always used.
    assert run.invoke(app, group, env=env).exit_code == 0
    assert seen[-1] == ("GET", "/v1/me", "Bearer sk_test_group")
    # --json given to the group shapes the subcommand's output and its errors.
    r = run.invoke(app, [*group, "--json", "object", "marketing"], env=env)
    assert r.exit_code == 0 and json.loads(r.stdout)["user_id"] == "usr_x", r.output
    r = run.invoke(app, ["me", "--json", *NOWHERE, "restrict"], env=env)
    assert r.exit_code == 1 and "error" in json.loads(r.stderr), r.output


def test_exec_keeps_the_commands_own_options(run: CliRunner) -> None:
    # `-la` belongs to ls, not to us; the failure is the unreachable API, not a usage error.
    r = run.invoke(app, ["sandbox", "exec", *NOWHERE, "sbx_x", "ls", "-la", "/"])
    assert r.exit_code == 1 and "cannot reach" in r.stderr
    assert run.invoke(app, ["sandbox", "exec", "sbx_x"]).exit_code == 2


def test_command_string() -> None:
    assert command_string(["echo $HOME | wc"]) == "echo $HOME | wc"
    assert command_string(["ls", "-la", "my dir"]) == "ls -la 'my dir'"


def test_shell_needs_a_terminal(run: CliRunner) -> None:
    r = run.invoke(app, ["sandbox", "shell", "sbx_x", *NOWHERE], input="")
    assert r.exit_code == 2 and "needs a terminal" in r.stderr


def test_error_decorator_reports_code_and_exit_status() -> None:
    @c.handle_errors
    def boom(json_out: bool = False) -> None:
        raise HutchSDKError("sandbox is gone", code="sandbox_not_found", status=404)

    with pytest.raises(typer.Exit) as e:
        boom(json_out=False)
    assert e.value.exit_code == 1


def test_json_conversion_of_results() -> None:
    from hutch.sdk import CommandResult

    data = c.to_jsonable([CommandResult("o", "e", 3)])
    assert data == [
        {
            "stdout": "o",
            "stderr": "e",
            "exit_code": 3,
            "error": None,
            "pid": None,
            "signal": None,
            "timed_out": False,
        }
    ]


def test_raw_mode_is_restored_even_on_error() -> None:
    leader, follower = os.openpty()
    try:
        before = termios.tcgetattr(follower)
        with pytest.raises(RuntimeError), raw_mode(follower):
            inside = termios.tcgetattr(follower)
            assert not inside[3] & termios.ECHO and not inside[3] & termios.ICANON
            raise RuntimeError("interrupted")
        assert termios.tcgetattr(follower) == before
        assert terminal_size(follower).cols >= 1
    finally:
        os.close(leader)
        os.close(follower)


def test_window_changes_are_noticed() -> None:
    flag = WinchFlag()
    with flag.installed():
        assert not flag.take()
        os.kill(os.getpid(), signal.SIGWINCH)
        assert flag.take()
        assert not flag.take()
    assert signal.getsignal(signal.SIGWINCH) is not flag._on_signal


TEAM = {"team_id": "team_1", "name": "ml", "created_at": "2030-01-01T00:00:00Z", "role": "owner"}
Seen = list[tuple[str, str, object, str]]


@pytest.fixture
def teams_api() -> Iterator[tuple[str, Seen]]:
    """A loopback stand-in for the team routes: answers as the server would and records
    (method, path with query, JSON body, Idempotency-Key header)."""
    seen: Seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: object = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            if data:
                kind = "application/problem+json" if status >= 400 else "application/json"
                self.send_header("content-type", kind)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _answer(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            body = json.loads(raw or b"{}")
            seen.append((self.command, self.path, body, self.headers.get("idempotency-key") or ""))
            member = {"team_id": "team_1", "user_id": "usr_1", "created_at": TEAM["created_at"]}
            route = (self.command, self.path.split("?")[0])
            if route == ("GET", "/v1/teams"):
                page = (
                    {"items": [{**TEAM, "team_id": "team_2", "role": "viewer"}]}
                    if "cursor=c1" in self.path
                    else {"items": [TEAM], "next_cursor": "c1"}
                )
                self._send(200, page)
            elif route == ("POST", "/v1/teams"):
                self._send(201, {**TEAM, "name": body["name"]})
            elif route == ("GET", "/v1/teams/team_1"):
                self._send(200, TEAM)
            elif route == ("GET", "/v1/teams/team_1/members"):
                self._send(200, {"items": [{**member, "user_id": "usr_0", "role": "owner"}]})
            elif route == ("POST", "/v1/teams/team_1/members"):
                self._send(201, {**member, **body})
            elif route == ("PATCH", "/v1/teams/team_1/members/usr_1"):
                self._send(200, {**member, **body})
            elif route == ("DELETE", "/v1/teams/team_1/members/usr_1"):
                self._send(204)
            else:
                self._send(
                    404,
                    {
                        "title": "Not found",
                        "status": 404,
                        "code": "not_found",
                        "detail": "team not found",
                    },
                )

        do_GET = do_POST = do_PATCH = do_DELETE = _answer

    with _serving(Handler) as url:
        yield url, seen


def test_teams_commands_are_registered(run: CliRunner) -> None:
    assert "teams" in run.invoke(app, ["--help"]).output
    out = run.invoke(app, ["teams", "--help"]).output
    for cmd in ("ls", "create", "info", "members", "add-member", "set-role", "remove-member"):
        assert cmd in out


@pytest.mark.parametrize(
    "args",
    [
        ["teams", "add-member", "team_1", "usr_1", "--role", "boss"],
        ["teams", "add-member", "team_1", "usr_1", "--role", "boss", "--json"],
        ["teams", "set-role", "team_1", "usr_1", "boss"],
    ],
)
def test_teams_refuse_unknown_roles_before_any_request(run: CliRunner, args: list[str]) -> None:
    r = run.invoke(app, [*args, *NOWHERE])
    assert r.exit_code == 2, r.output
    assert "'boss' is not one of" in r.output
    for role in ("owner", "admin", "member", "viewer"):
        assert role in r.output
    assert "cannot reach" not in r.output


def test_teams_list_and_show(run: CliRunner, teams_api: tuple[str, Seen]) -> None:
    url, seen = teams_api
    opts = ["--api-url", url, "--api-key", "sk_test_x"]
    r = run.invoke(app, ["teams", "ls", *opts])
    assert r.exit_code == 0, r.output
    assert "team_1" in r.stdout and "team_2" in r.stdout and "viewer" in r.stdout
    assert [s[1] for s in seen] == ["/v1/teams", "/v1/teams?cursor=c1"]  # every page
    r = run.invoke(app, ["teams", "ls", "--json", *opts])
    assert [t["team_id"] for t in json.loads(r.stdout)] == ["team_1", "team_2"]
    r = run.invoke(app, ["teams", "create", "research", "--json", *opts])
    assert r.exit_code == 0 and json.loads(r.stdout)["name"] == "research", r.output
    method, path, body, idem = seen[-1]
    assert (method, path, body) == ("POST", "/v1/teams", {"name": "research"}) and idem
    r = run.invoke(app, ["teams", "info", "team_1", *opts])
    assert r.exit_code == 0 and "team_1" in r.stdout and "owner" in r.stdout, r.output
    r = run.invoke(app, ["teams", "members", "team_1", *opts])
    assert r.exit_code == 0 and "usr_0" in r.stdout and "owner" in r.stdout, r.output
    r = run.invoke(app, ["teams", "members", "team_1", "--json", *opts])
    assert json.loads(r.stdout) == [
        {"team_id": "team_1", "user_id": "usr_0", "created_at": TEAM["created_at"], "role": "owner"}
    ]


def test_teams_membership_changes(run: CliRunner, teams_api: tuple[str, Seen]) -> None:
    url, seen = teams_api
    opts = ["--api-url", url, "--api-key", "sk_test_x"]
    r = run.invoke(app, ["teams", "add-member", "team_1", "usr_1", "--role", "viewer", *opts])
    assert r.exit_code == 0 and "viewer" in r.stdout, r.output
    method, path, body, idem = seen[-1]
    assert (method, path) == ("POST", "/v1/teams/team_1/members") and idem
    assert body == {"user_id": "usr_1", "role": "viewer"}
    r = run.invoke(app, ["teams", "add-member", "team_1", "usr_1", "--json", *opts])
    assert json.loads(r.stdout)["role"] == "member"  # the server's default, sent explicitly
    r = run.invoke(app, ["teams", "set-role", "team_1", "usr_1", "ADMIN", "--json", *opts])
    assert r.exit_code == 0 and json.loads(r.stdout)["role"] == "admin", r.output
    assert seen[-1][:3] == ("PATCH", "/v1/teams/team_1/members/usr_1", {"role": "admin"})
    r = run.invoke(app, ["teams", "remove-member", "team_1", "usr_1", *opts])
    assert r.exit_code == 0 and r.stdout == "usr_1: removed from team_1\n", r.output
    assert seen[-1][:2] == ("DELETE", "/v1/teams/team_1/members/usr_1")
    r = run.invoke(app, ["teams", "remove-member", "team_1", "usr_1", "--json", *opts])
    assert json.loads(r.stdout) == {"team_id": "team_1", "user_id": "usr_1", "removed": True}


def test_teams_errors_name_the_code(run: CliRunner, teams_api: tuple[str, Seen]) -> None:
    url, _ = teams_api
    opts = ["--api-url", url, "--api-key", "sk_test_x"]
    r = run.invoke(app, ["teams", "info", "team_x", *opts])
    assert r.exit_code == 1 and "team not found" in r.stderr and "not_found" in r.stderr
    r = run.invoke(app, ["teams", "members", "team_x", "--json", *opts])
    assert r.exit_code == 1
    assert json.loads(r.stderr)["error"]["code"] == "not_found"
