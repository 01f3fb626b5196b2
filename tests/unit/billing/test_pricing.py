"""The price book and its rounding rule."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from hutch.services.pricing import (
    DEFAULT_VERSION,
    PriceBook,
    PriceVersion,
    format_dollars,
    micros_to_cents,
    round_micros,
)

HOUR_MS = 3_600_000


def test_default_price_is_0_041_per_hour_for_one_vcpu_and_one_gib() -> None:
    v = DEFAULT_VERSION
    assert v.compute_micros(HOUR_MS, 1024 * HOUR_MS) == Decimal(41_000)
    # per second: 41000 / 3600 micro-dollars, exactly, before any rounding
    assert v.compute_micros(1000, 1024 * 1000) == Decimal(41_000) / 3600
    # linear in size: 4 vCPU + 8 GiB for one hour = 4 x 0.0205 + 8 x 0.0205 dollars
    assert v.compute_micros(4 * HOUR_MS, 8 * 1024 * HOUR_MS) == Decimal(246_000)


def test_rounding_is_half_to_even_at_the_micro_dollar() -> None:
    assert [round_micros(Decimal(x)) for x in ("0.5", "1.5", "2.5", "2.5000001", "-0.5")] == [
        0,
        2,
        2,
        3,
        0,
    ]
    # 0.0018 $/vCPU-h is 0.0005 micro-dollars per vCPU-ms: 1 s → 0.5 → 0, 3 s → 1.5 → 2
    v = PriceVersion(
        version="t",
        effective_from=datetime(2020, 1, 1, tzinfo=UTC),
        vcpu_hour=Decimal("0.0018"),
        gib_hour=Decimal(0),
    )
    assert round_micros(v.compute_micros(1000, 0)) == 0
    assert round_micros(v.compute_micros(3000, 0)) == 2
    assert micros_to_cents(5_000) == 0 and micros_to_cents(15_000) == 2
    assert format_dollars(41_000) == "$0.041000" and format_dollars(-1) == "-$0.000001"


def test_versions_apply_from_their_date(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "versions": [
                    {
                        "version": "v2",
                        "effective_from": "2031-01-01T00:00:00Z",
                        "vcpu_hour": "0.03",
                        "gib_hour": "0.01",
                        "models": {"m1": {"input_per_million": "1", "output_per_million": "4"}},
                    },
                    {
                        "version": "v1",
                        "effective_from": "2020-01-01T00:00:00Z",
                        "vcpu_hour": "0.0205",
                        "gib_hour": "0.0205",
                    },
                ]
            }
        )
    )
    book = PriceBook.load(path)
    assert book.at(datetime(2030, 6, 1, tzinfo=UTC)).version == "v1"
    assert book.at(datetime(2031, 6, 1, tzinfo=UTC)).version == "v2"
    assert book.exact("v2", "sandbox", HOUR_MS, 0, 0) == Decimal(30_000)
    # model meters: dollars per million tokens == micro-dollars per token
    assert book.exact("v2", "model:m1:output", 0, 0, 1000) == Decimal(4000)
    assert book.exact("v2", "model:unknown:output", 0, 0, 1000) == 0


def test_price_book_refuses_duplicate_versions() -> None:
    with pytest.raises(ValueError, match="distinct"):
        PriceBook([DEFAULT_VERSION, DEFAULT_VERSION])
