"""OCI documents and status decoding (no runsc needed)."""

from __future__ import annotations

import signal
from pathlib import Path

from hutch.models import ExecRequest, ExecUser, IsolationClass
from hutch.runtime.base import SandboxPlan
from hutch.runtime.gvisor.bundle import process_spec, sandbox_config
from hutch.runtime.gvisor.process import status_from_returncode
from hutch.runtime.gvisor.runsc import Runsc, RunscOptions, clean_message

PLAN = SandboxPlan(
    sandbox_id="sbx_01hzzzzzzzzzzzzzzzzzzzzzzz",
    isolation=IsolationClass.gvisor,
    template_layers=(Path("/t/base"),),
    vcpu=2,
    memory_mb=1024,
    disk_mb=4096,
    env={"A": "1"},
    uid_base=1_065_536,
    slot=1,
    state_dir=Path("/var/lib/hutch/sandboxes/x"),
)


def test_sandbox_config_limits_and_identity() -> None:
    cfg = sandbox_config(PLAN, Path("/r"))
    res = cfg["linux"]["resources"]
    assert res["cpu"] == {"quota": 200_000, "period": 100_000}
    assert res["memory"] == {"limit": 1 << 30, "swap": 1 << 30}
    assert res["pids"] == {"limit": 4096}
    assert cfg["linux"]["cgroupsPath"] == f"/hutch/{PLAN.sandbox_id}"
    assert cfg["hostname"] == PLAN.sandbox_id
    assert cfg["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 1_065_536, "size": 65536}]
    kinds = {ns["type"] for ns in cfg["linux"]["namespaces"]}
    assert kinds == {"pid", "ipc", "uts", "mount", "user", "network"}
    assert "A=1" in cfg["process"]["env"]
    assert cfg["root"] == {"path": "/r", "readonly": False}


def test_network_seam_joins_a_prepared_namespace() -> None:
    cfg = sandbox_config(PLAN, Path("/r"), netns=Path("/run/netns/sbx"))
    (net,) = [ns for ns in cfg["linux"]["namespaces"] if ns["type"] == "network"]
    assert net == {"type": "network", "path": "/run/netns/sbx"}


def test_process_spec_per_user() -> None:
    user = process_spec(PLAN, ExecRequest(cmd="ls", env={"B": "2"}), terminal=False)
    assert user["user"]["uid"] == 1000 and user["cwd"] == "/home/user"
    assert user["args"] == ["/bin/bash", "-lc", "ls"]
    assert {"HOME=/home/user", "A=1", "B=2"} <= set(user["env"])
    assert user["capabilities"]["effective"] == []
    root = process_spec(
        PLAN, ExecRequest(cmd=["id"], user=ExecUser.root, cwd="/srv"), terminal=True
    )
    assert root["user"]["uid"] == 0 and root["cwd"] == "/srv" and root["terminal"]
    assert "CAP_SYS_ADMIN" not in root["capabilities"]["effective"]
    assert "CAP_CHOWN" in root["capabilities"]["effective"]


def test_status_from_returncode() -> None:
    assert status_from_returncode(0, set()).code == 0
    assert status_from_returncode(143, set()).code == 143  # could be `exit 143`
    assert status_from_returncode(143, {signal.SIGTERM}).signal == signal.SIGTERM
    assert status_from_returncode(137, set()).signal == signal.SIGKILL
    assert status_from_returncode(-9, set()).signal == 9


def test_clean_message_hides_the_command() -> None:
    raw = (
        '{"msg":"executing processes for container: executing command \\"cat /secret\\" in '
        'sandbox: error finding executable","level":"error","time":"x"}'
    )
    msg = clean_message(raw)
    assert "/secret" not in msg and "error finding executable" in msg


def test_every_runsc_call_carries_platform_network_and_no_memory_overlay() -> None:
    args = Runsc(RunscOptions(), Path("/s/runsc")).global_args()
    assert "--platform=ptrace" in args and "--network=none" in args
    assert "--overlay2=none" in args and "--root=/s/runsc" in args
