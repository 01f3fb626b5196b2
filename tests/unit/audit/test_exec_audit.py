"""The exec trail service: basename only, filters, pagination, JSON Lines and CSV export."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

from hutch.db.session import Database
from hutch.services.clock import FakeClock
from hutch.services.exec_audit import ExecAudit, command_name


def test_command_name_is_the_basename_of_argv0_only() -> None:
    assert command_name("/usr/bin/python3") == "python3"
    assert command_name("python3") == "python3"
    assert command_name("./run.sh") == "run.sh"
    assert command_name("/opt/tool/") == "tool"
    assert command_name("/") == "/"
    assert len(command_name("x" * 1000)) == 255


def test_list_filters_pages_and_exports(database: Database) -> None:
    clock = FakeClock()
    audit = ExecAudit(database, clock)
    for i in range(5):
        audit.start(
            project_id="prj_a",
            sandbox_id="sbx_1" if i < 3 else "sbx_2",
            argv0="/bin/sh" if i % 2 else '/usr/bin/we"ird,name',
            kind="exec",
            pid=100 + i,
            exit_code=i,
            ended_at=clock.now() + timedelta(seconds=1),
        )
        clock.advance(60)
    audit.start(project_id="prj_b", sandbox_id="sbx_9", argv0="ls", kind="exec")
    first = audit.list("prj_a", limit=2, cursor=None)
    assert [r.pid for r in first.items] == [104, 103] and first.next_cursor
    rest = audit.list("prj_a", limit=10, cursor=first.next_cursor)
    assert [r.pid for r in rest.items] == [102, 101, 100] and rest.next_cursor is None
    assert [
        r.pid for r in audit.list("prj_a", limit=10, cursor=None, sandbox_id="sbx_2").items
    ] == [
        104,
        103,
    ]
    assert {r.command for r in audit.list("prj_a", limit=10, cursor=None, command="sh").items} == {
        "sh"
    }
    since = FakeClock().now() + timedelta(seconds=90)
    assert len(audit.list("prj_a", limit=10, cursor=None, since=since).items) == 3
    lines = list(audit.export("prj_a", "jsonl"))
    assert [json.loads(x)["pid"] for x in lines] == [100, 101, 102, 103, 104]
    rows = list(csv.DictReader(io.StringIO("".join(audit.export("prj_a", "csv")))))
    assert rows[0]["command"] == 'we"ird,name' and rows[0]["exit_code"] == "0"
    assert {r["project_id"] for r in rows} == {"prj_a"}


def test_background_and_stream_records_are_finished_later(database: Database) -> None:
    clock = FakeClock()
    audit = ExecAudit(database, clock)
    bg = audit.start(project_id="p", sandbox_id="s", argv0="sleep", kind="background", pid=7)
    st = audit.start(project_id="p", sandbox_id="s", argv0="cat", kind="stream")
    audit.set_pid(st, 8)
    clock.advance(5)
    audit.finish(sandbox_id="s", pid=7, exit_code=0)
    audit.finish(record_id=st, exit_code=3)
    audit.finish(sandbox_id="s", pid=7, exit_code=99)  # already ended: unchanged
    got = {r.id: r for r in audit.list("p", limit=10, cursor=None).items}
    assert (got[bg].exit_code, got[bg].ended_at) == (0, clock.now())
    assert (got[st].pid, got[st].exit_code) == (8, 3)


def test_test_mode_and_live_mode_trails_are_apart(database: Database) -> None:
    audit = ExecAudit(database, FakeClock())
    audit.start(project_id="p", sandbox_id="s1", argv0="live", kind="exec", mode="live")
    audit.start(project_id="p", sandbox_id="s2", argv0="test", kind="exec", mode="test")
    for mode in ("live", "test"):
        items = audit.list("p", limit=10, cursor=None, mode=mode).items
        assert [i.command for i in items] == [mode]
        assert [json.loads(x)["command"] for x in audit.export("p", "jsonl", mode=mode)] == [mode]
