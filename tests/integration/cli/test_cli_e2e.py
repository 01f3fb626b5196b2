"""The `hutch` command against a real server, run as users run it: a separate process."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.sdk.server import Server
from tests.support.interrupt import interrupt_when_started, marked_command, wait_until_gone

pytestmark = pytest.mark.slow
CLI = (sys.executable, "-m", "hutch.cli.main")


def hutch(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI with the environment the `api` fixture set."""
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=120,
        env=os.environ.copy(),
    )


@pytest.fixture
def sandbox_id(api: Server) -> Iterator[str]:
    r = hutch("sandbox", "create", "--timeout", "300", "--metadata", "suite=cli", "--json")
    assert r.returncode == 0, r.stderr
    sid = json.loads(r.stdout)["sandbox_id"]
    yield sid
    hutch("sandbox", "kill", sid)


def test_create_ls_info_kill(sandbox_id: str) -> None:
    listed = json.loads(hutch("sandbox", "ls", "--metadata", "suite=cli", "--json").stdout)
    assert sandbox_id in [s["sandbox_id"] for s in listed]
    table = hutch("sandbox", "ls").stdout
    assert sandbox_id in table
    info = json.loads(hutch("sandbox", "info", sandbox_id, "--json").stdout)
    assert info["state"] == "running" and info["metadata"] == {"suite": "cli"}
    r = hutch("sandbox", "kill", sandbox_id, "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == [
        {"sandbox_id": sandbox_id, "killed": True}
    ]
    info = json.loads(hutch("sandbox", "info", sandbox_id, "--json").stdout)
    assert info["state"] in ("stopping", "stopped")


def test_exec_streams_and_returns_the_exit_code(sandbox_id: str) -> None:
    r = hutch("sandbox", "exec", sandbox_id, "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    # Like `docker exec`: our options come before the sandbox id, the command's after it.
    r = hutch(
        "sandbox", "exec", "--cwd", "/tmp", "-e", "X=1", sandbox_id, "sh", "-c", "echo $X $(pwd)"
    )
    assert r.returncode == 0 and r.stdout == "1 /tmp\n"
    r = hutch("sandbox", "exec", "--stdin", sandbox_id, "wc -c", input="12345")
    assert r.stdout.strip() == "5"
    r = hutch("sandbox", "exec", "--json", sandbox_id, "echo hi")
    assert json.loads(r.stdout)["stdout"] == "hi\n" and json.loads(r.stdout)["exit_code"] == 0
    # Without --stdin the command reads end-of-input at once (as `docker exec` without -i).
    r = hutch("sandbox", "exec", "--timeout", "20", sandbox_id, "wc -l")
    assert (r.returncode, r.stdout.strip()) == (0, "0"), r.stderr


def test_exec_streams_binary_stdin(sandbox_id: str) -> None:
    data = bytes(range(256)) * 1024 + b"\xff\x00"
    r = subprocess.run(
        [*CLI, "sandbox", "exec", "--stdin", sandbox_id, "sha256sum"],
        input=data,
        capture_output=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    # A command that stops reading early ends the call with its own result.
    r = subprocess.run(
        [*CLI, "sandbox", "exec", "--stdin", sandbox_id, "head -1"],
        input=b"first\n" + b"more\n" * 2_000_000,
        capture_output=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert (r.returncode, r.stdout) == (0, b"first\n"), r.stderr


def test_ctrl_c_ends_the_command_in_the_sandbox(sandbox_id: str) -> None:
    cmd, count = marked_command()
    assert interrupt_when_started([*CLI, "sandbox", "exec", sandbox_id, cmd]) == 130
    wait_until_gone(lambda: hutch("sandbox", "exec", sandbox_id, count).stdout)


def test_cp_round_trip(sandbox_id: str, tmp_path: Path) -> None:
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024))
    r = hutch("sandbox", "cp", str(src), f"{sandbox_id}:/tmp/")
    assert r.returncode == 0, r.stderr
    r = hutch("sandbox", "exec", sandbox_id, "sha256sum /tmp/data.bin")
    assert r.stdout.split()[0] == hashlib.sha256(src.read_bytes()).hexdigest()
    back = tmp_path / "back.bin"
    r = hutch("sandbox", "cp", "--json", f"{sandbox_id}:/tmp/data.bin", str(back))
    assert r.returncode == 0 and json.loads(r.stdout)["bytes"] == src.stat().st_size
    assert back.read_bytes() == src.read_bytes()
    r = hutch("sandbox", "cp", f"{sandbox_id}:/tmp/missing", str(tmp_path / "m"))
    assert r.returncode == 1 and "file_not_found" in r.stderr
    assert not (tmp_path / "m").exists()
    # Local files that are not there: a one-line error, not a traceback.
    r = hutch("sandbox", "cp", str(tmp_path / "absent"), f"{sandbox_id}:/tmp/")
    assert r.returncode == 1 and "No such file or directory" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = hutch("sandbox", "cp", f"{sandbox_id}:/tmp/data.bin", str(tmp_path / "no" / "dir" / "x"))
    assert r.returncode == 1 and "No such file or directory" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_template_ls_asks_the_api(api: Server) -> None:
    r = hutch("template", "ls", "--json")
    assert r.returncode == 0, r.stderr
    assert {"name": "base", "ready": True}.items() <= json.loads(r.stdout)[0].items()
    assert "base" in hutch("template", "ls").stdout


def test_errors_name_the_code(api: Server) -> None:
    r = hutch("sandbox", "info", "sbx_" + "0" * 26)
    assert r.returncode == 1 and "sandbox_not_found" in r.stderr
    r = hutch("me", "--json")
    assert r.returncode == 0 and isinstance(json.loads(r.stdout), dict)
    r = hutch("me", "--api-key", "sk_test_wrong")
    assert r.returncode == 1 and "unauthenticated" in r.stderr


def test_shell_is_an_interactive_terminal(sandbox_id: str) -> None:
    """Drive `hutch sandbox shell` through a real pseudo-terminal, as a person would."""

    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    before = termios.tcgetattr(follower)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hutch.cli.main", "sandbox", "shell", sandbox_id],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=os.environ.copy(),
        start_new_session=True,
    )
    seen = bytearray()

    def read_until(marker: bytes, deadline_s: float = 30) -> None:
        end = time.monotonic() + deadline_s
        while marker not in seen:
            assert time.monotonic() < end, f"no {marker!r} in {bytes(seen)[-300:]!r}"
            ready, _, _ = select.select([leader], [], [], 0.1)
            if ready:
                seen.extend(os.read(leader, 4096))

    def read_any(window_s: float) -> None:
        end = time.monotonic() + window_s
        while time.monotonic() < end:
            ready, _, _ = select.select([leader], [], [], 0.05)
            if ready:
                seen.extend(os.read(leader, 4096))

    try:
        os.write(leader, b"echo $((6*7))\r")
        read_until(b"42")
        # A window change on our terminal reaches the shell inside the sandbox.
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        os.killpg(proc.pid, signal.SIGWINCH)
        end = time.monotonic() + 30
        while b"30 100" not in seen:  # the signal is asynchronous: ask again until it shows
            assert time.monotonic() < end, "the resize never reached the sandbox"
            os.write(leader, b"stty size\r")
            read_until(b"stty size", 5)
            read_any(0.5)
        os.write(leader, b"exit 3\r")
        assert proc.wait(timeout=30) == 3
        assert termios.tcgetattr(follower) == before  # raw mode was undone
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
        os.close(follower)


def test_secrets_commands_never_echo_the_value(api: Server) -> None:
    tag = os.urandom(4).hex()
    name, value = f"CLI_{tag}", f"CLIMARKER{tag}"
    r = hutch("secrets", "set", name, input=value + "\n")
    assert r.returncode == 0, r.stderr
    assert value not in r.stdout + r.stderr and "version 1" in r.stdout
    listed = json.loads(hutch("secrets", "ls", "--json").stdout)
    assert name in [s["name"] for s in listed] and value not in json.dumps(listed)
    r = hutch("secrets", "rewrap", "--rotate", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["rewrapped"] >= 1
    r = hutch("sandbox", "create", "--secret", f"INJECTED={name}", "--json")
    assert r.returncode == 0, r.stderr
    sid = json.loads(r.stdout)["sandbox_id"]
    try:
        r = hutch("sandbox", "exec", sid, "printenv INJECTED")
        assert r.stdout == value + "\n"  # still decrypts after the KEK rotation
    finally:
        hutch("sandbox", "kill", sid)
    assert hutch("secrets", "rm", name).returncode == 0
    r = hutch("secrets", "rm", name)
    assert r.returncode == 1 and "not_found" in r.stderr


def test_me_commands(api: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zipfile

    import httpx

    tag = os.urandom(4).hex()
    email = f"cli-{tag}@example.test"
    with httpx.Client(
        base_url=api.url, headers={"Authorization": f"Bearer {api.admin_key}"}, timeout=30
    ) as c:
        team = c.get("/v1/me").json()["project"]["team_id"]
        user = c.post("/v1/users", json={"email": email, "name": "cli"}).json()["user_id"]
        c.post(f"/v1/teams/{team}/members", json={"user_id": user, "role": "member"})
        key = c.post("/v1/keys", json={"name": "cli", "user_id": user}).json()["key"]
    # Options given to `hutch me` reach its subcommand (here without HUTCH_API_KEY at all).
    monkeypatch.delenv("HUTCH_API_KEY")
    r = hutch("me", "--api-key", key, "--json", "update", "--name", "Renamed")
    assert r.returncode == 0 and json.loads(r.stdout)["name"] == "Renamed", r.stderr
    monkeypatch.setenv("HUTCH_API_KEY", key)
    out = tmp_path / "export.zip"
    r = hutch("me", "export", "-o", str(out))
    assert r.returncode == 0, r.stderr
    with zipfile.ZipFile(out) as z:
        assert json.loads(z.read("profile.json"))["name"] == "Renamed"
        assert {"teams.json", "api_keys.json", "sandboxes.json", "secrets.json"} <= set(
            z.namelist()
        )
    assert hutch("me", "restrict").returncode == 0
    r = hutch("sandbox", "create")
    assert r.returncode == 1 and "account_restricted" in r.stderr
    assert hutch("me", "restrict", "--lift").returncode == 0
    r = hutch("me", "object", "marketing", "--json")
    assert json.loads(r.stdout)["objections"] == ["marketing"]
    r = hutch("me", "erase", "--confirm", "wrong@example.test")
    assert r.returncode == 1 and "confirm" in r.stderr
    r = hutch("me", "erase", "--confirm", email)
    assert r.returncode == 0, r.stderr
    r = hutch("me")
    assert r.returncode == 1 and "account_erased" in r.stderr


def test_teams_and_members(api: Server) -> None:
    tag = os.urandom(4).hex()
    r = hutch("users", "create", f"cli-team-{tag}@example.test", "--json")
    assert r.returncode == 0, r.stderr
    user = json.loads(r.stdout)["user_id"]
    r = hutch("teams", "create", f"cli-{tag}", "--json")
    assert r.returncode == 0, r.stderr
    team = json.loads(r.stdout)
    assert team["name"] == f"cli-{tag}" and team["role"] == "owner"
    team_id = team["team_id"]
    listed = {t["team_id"]: t for t in json.loads(hutch("teams", "ls", "--json").stdout)}
    assert listed[team_id]["role"] == "owner"
    assert team_id in hutch("teams", "ls").stdout
    info = hutch("teams", "info", team_id)
    assert info.returncode == 0 and f"cli-{tag}" in info.stdout, info.stderr

    r = hutch("teams", "add-member", team_id, user, "--role", "viewer", "--json")
    assert r.returncode == 0, r.stderr
    added = json.loads(r.stdout)
    assert (added["team_id"], added["user_id"], added["role"]) == (team_id, user, "viewer")
    r = hutch("teams", "set-role", team_id, user, "member", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["role"] == "member", r.stderr
    members = json.loads(hutch("teams", "members", team_id, "--json").stdout)
    roles = {m["user_id"]: m["role"] for m in members}
    assert roles[user] == "member" and sorted(roles.values()) == ["member", "owner"]
    table = hutch("teams", "members", team_id)
    assert table.returncode == 0 and user in table.stdout and "member" in table.stdout

    # A role the server does not know is refused before any request, listing the allowed ones.
    r = hutch("teams", "add-member", team_id, user, "--role", "boss")
    assert r.returncode == 2 and "'boss' is not one of" in r.stderr, r.stderr
    assert all(role in r.stderr for role in ("owner", "admin", "member", "viewer"))
    r = hutch("teams", "set-role", team_id, user, "superuser")
    assert r.returncode == 2 and "'superuser' is not one of" in r.stderr, r.stderr
    r = hutch("teams", "add-member", team_id, user, "--role", "viewer")
    assert r.returncode == 1 and "already a member" in r.stderr, r.stderr

    r = hutch("teams", "remove-member", team_id, user)
    assert r.returncode == 0 and r.stdout == f"{user}: removed from {team_id}\n", r.stderr
    members = json.loads(hutch("teams", "members", team_id, "--json").stdout)
    assert user not in [m["user_id"] for m in members]
    r = hutch("teams", "remove-member", team_id, user, "--json")
    assert r.returncode == 1 and json.loads(r.stderr)["error"]["code"] == "not_found"
    r = hutch("teams", "info", "team_" + "0" * 26)
    assert r.returncode == 1 and "not_found" in r.stderr
