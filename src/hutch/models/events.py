"""Events a runner reports to the control plane: state changes and usage heartbeats."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from hutch.models.common import SandboxState, WireModel


class StateEvent(WireModel):
    """A sandbox changed state (e.g. its timeout passed, or it died)."""

    type: Literal["state"] = "state"
    sandbox_id: str
    state: SandboxState
    reason: str | None = None
    at: datetime


class UsageHeartbeat(WireModel):
    """A running sandbox was alive, at its size, from `window_start` to `window_end`."""

    type: Literal["usage"] = "usage"
    sandbox_id: str
    vcpu: int
    memory_mb: int
    window_start: datetime
    window_end: datetime
    cpu_time_us: int
    final: bool = False


RunnerEvent = Annotated[StateEvent | UsageHeartbeat, Field(discriminator="type")]
