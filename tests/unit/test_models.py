"""Wire models reject bad input with messages that say what is allowed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hutch.ids import is_id, new_id
from hutch.models import ExecRequest, RunnerCreate, SandboxSpec


def test_ids_are_prefixed_and_sortable() -> None:
    a, b = new_id("sbx"), new_id("sbx")
    assert is_id(a, "sbx") and is_id(b, "sbx")
    assert not is_id(a, "prj")
    assert a[:4] == "sbx_" and len(a) == 30
    with pytest.raises(ValueError, match="allowed"):
        new_id("nope")


def test_size_out_of_range_names_the_bounds() -> None:
    with pytest.raises(ValidationError) as e:
        SandboxSpec(vcpu=64)
    assert "less than or equal to 16" in str(e.value)
    with pytest.raises(ValidationError):
        SandboxSpec(memory_mb=1)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        RunnerCreate.model_validate({"template": "base", "cpus": 2})


def test_bad_env_names_are_refused() -> None:
    with pytest.raises(ValidationError, match="not allowed"):
        SandboxSpec(env={"1BAD": "x"})


def test_exec_shell_string_runs_under_bash() -> None:
    assert ExecRequest(cmd="echo hi").argv() == ["/bin/bash", "-lc", "echo hi"]
    assert ExecRequest(cmd=["true"]).argv() == ["true"]
    with pytest.raises(ValidationError):
        ExecRequest(cmd=[])
    with pytest.raises(ValidationError):
        ExecRequest(cmd="ls", cwd="relative")
