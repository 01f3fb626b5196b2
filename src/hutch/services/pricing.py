"""The price book: versioned rates, and the one rounding rule every amount goes through.

Usage is stored as exact integer quantities (vCPU-milliseconds, MiB-milliseconds, model units).
An amount is computed from a sum of quantities priced at one price-book version with exact
`Decimal` arithmetic and rounded once, half to even, to whole micro-dollars (`round_micros`).
Invoice lines are rounded that way and an invoice total is the sum of its rounded lines, so the
lines always add up to the total. Charging in cents rounds the total half to even as well.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

MICROS_PER_DOLLAR = 1_000_000
MS_PER_HOUR = 3_600_000
MIB_PER_GIB = 1024


def round_micros(amount: Decimal) -> int:
    """Exact micro-dollars rounded half to even to an integer (the single rounding rule)."""
    return int(amount.to_integral_value(rounding=ROUND_HALF_EVEN))


def micros_to_cents(micros: int) -> int:
    """Whole cents for a payment processor, rounded half to even."""
    return round_micros(Decimal(micros) / Decimal(10_000))


def format_dollars(micros: int) -> str:
    """`$1.234567` style rendering of micro-dollars (six decimals: nothing is hidden)."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_DOLLAR)
    return f"{sign}${whole}.{frac:06d}"


class ModelRate(BaseModel):
    """Dollars per million units of a model meter (e.g. input and output tokens)."""

    model_config = ConfigDict(extra="forbid")

    input_per_million: Decimal = Field(ge=0)
    output_per_million: Decimal = Field(ge=0)


class PriceVersion(BaseModel):
    """One version of the price book, in force from `effective_from` until the next one."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")
    effective_from: datetime
    vcpu_hour: Decimal = Field(ge=0, description="Dollars per vCPU-hour")
    gib_hour: Decimal = Field(ge=0, description="Dollars per GiB-hour of memory")
    models: dict[str, ModelRate] = Field(default_factory=dict)

    def compute_micros(self, vcpu_ms: int, mib_ms: int) -> Decimal:
        """Exact (unrounded) micro-dollars of sandbox quantities."""
        per_vcpu = self.vcpu_hour * MICROS_PER_DOLLAR / MS_PER_HOUR
        per_mib = self.gib_hour * MICROS_PER_DOLLAR / (MS_PER_HOUR * MIB_PER_GIB)
        return Decimal(vcpu_ms) * per_vcpu + Decimal(mib_ms) * per_mib

    def model_micros(self, meter: str, units: int) -> Decimal:
        """Exact micro-dollars of `units` of a model meter `model:NAME:input|output`."""
        _, name, direction = meter.split(":", 2)
        rate = self.models.get(name)
        if rate is None:
            return Decimal(0)
        per = rate.input_per_million if direction == "input" else rate.output_per_million
        return Decimal(units) * per  # dollars per million units == micro-dollars per unit


DEFAULT_VERSION = PriceVersion(
    version="2026-01",
    effective_from=datetime(2020, 1, 1, tzinfo=UTC),
    vcpu_hour=Decimal("0.0205"),
    gib_hour=Decimal("0.0205"),
)


@dataclass
class PriceBook:
    """Versions sorted by `effective_from`; a usage record is priced by the version in force
    when it started, and keeps that version's name."""

    versions: list[PriceVersion] = field(default_factory=lambda: [DEFAULT_VERSION])

    def __post_init__(self) -> None:
        if not self.versions:
            raise ValueError("a price book needs at least one version")
        self.versions.sort(key=lambda v: v.effective_from)
        names = [v.version for v in self.versions]
        if len(set(names)) != len(names):
            raise ValueError("price book versions must have distinct names")
        self._by_name = {v.version: v for v in self.versions}

    def exact(self, version: str, meter: str, vcpu_ms: int, mib_ms: int, units: int) -> Decimal:
        """Exact micro-dollars of summed quantities of one meter at one version."""
        v = self.get(version)
        if meter.startswith("model:"):
            return v.model_micros(meter, units)
        return v.compute_micros(vcpu_ms, mib_ms)

    def at(self, when: datetime) -> PriceVersion:
        """The version in force at `when` (the earliest one for times before it)."""
        current = self.versions[0]
        for v in self.versions:
            if v.effective_from <= when:
                current = v
        return current

    def get(self, version: str) -> PriceVersion:
        """A version by name (unknown names fall back to the newest: never price at zero)."""
        return self._by_name.get(version, self.versions[-1])

    @classmethod
    def load(cls, path: Path | None) -> PriceBook:
        """The built-in book, or a JSON file `{"versions": [...]}` of `PriceVersion`s."""
        if path is None:
            return cls()
        data = json.loads(path.read_text())
        return cls([PriceVersion.model_validate(v) for v in data["versions"]])
