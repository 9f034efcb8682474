"""The README's sample events are valid events that the sample plans price, one per type."""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from rating.core.events import decode_usage_event
from rating.core.rate import rate
from rating.tariffbook.files import load_tariffs
from tests.unit.test_schemas import validator

REPO = Path(__file__).resolve().parents[2]


def readme_samples() -> list[bytes]:
    text = (REPO / "README.md").read_text()
    section = text.split("**A sample event of each type**", 1)[1]
    block = re.search(r"```json\n(.*?)```", section, re.DOTALL)
    assert block is not None
    return [line.encode() for line in block.group(1).splitlines() if line.strip()]


def test_every_sample_is_valid_and_priced_by_the_sample_plans() -> None:
    samples = readme_samples()
    book = load_tariffs(REPO / "tariffs")
    schema = validator("usage.event")
    services = set()
    for raw in samples:
        schema.validate(orjson.loads(raw))
        event = decode_usage_event(raw)
        assert rate(event, book, "standard").amount > 0
        services.add(event.service)
    assert services == {"call", "tollfree", "sms", "stt"}
