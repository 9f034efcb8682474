"""Topic creation settings and the outbox retention: parsed, bounded, one line when bad."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from rating.settings import Settings, SettingsError


def test_defaults_and_values() -> None:
    assert (Settings().topic_partitions, Settings().topic_replication) == (8, 1)
    assert Settings().outbox_retention_hours == 168
    parsed = Settings.from_env({"RATING_TOPIC_PARTITIONS": "24", "RATING_TOPIC_REPLICATION": "3",
                                "RATING_OUTBOX_RETENTION_HOURS": "48"})
    assert (parsed.topic_partitions, parsed.topic_replication) == (24, 3)
    assert parsed.outbox_retention_hours == 48


@pytest.mark.parametrize(("variable", "raw"), [
    ("RATING_TOPIC_PARTITIONS", "0"),
    ("RATING_TOPIC_PARTITIONS", "eight"),
    ("RATING_TOPIC_PARTITIONS", "1000000"),
    ("RATING_TOPIC_REPLICATION", "-1"),
    ("RATING_TOPIC_REPLICATION", "40000"),
    ("RATING_OUTBOX_RETENTION_HOURS", "0"),
])
def test_an_unusable_value_is_one_line_naming_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: raw})
    message = str(caught.value)
    assert message.startswith(variable) and "\n" not in message


class FakeAdmin:
    """A cluster that refuses the topics it is asked to create, with ``code``."""

    code = 0

    def __init__(self, **_config: object) -> None:
        self.created: list[object] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def list_topics(self) -> list[str]:
        return ["usage.events"]

    async def create_topics(self, topics: list[Any]) -> object:
        self.created += topics
        return SimpleNamespace(topic_errors=[(t.name, FakeAdmin.code, "refused by the cluster")
                                             for t in topics])


@pytest.mark.parametrize(("code", "variable"), [(37, "RATING_TOPIC_PARTITIONS"),
                                                (38, "RATING_TOPIC_REPLICATION")])
async def test_a_cluster_refusing_the_topics_fails_with_one_line_naming_the_setting(
        monkeypatch: pytest.MonkeyPatch, code: int, variable: str) -> None:
    import engine.services

    FakeAdmin.code = code
    monkeypatch.setattr(engine.services, "AIOKafkaAdminClient", FakeAdmin)
    with pytest.raises(SettingsError) as caught:
        await engine.services.ensure_topics("127.0.0.1:9", {"usage.events": 8, "dlq": 1},
                                            replication=3)
    assert str(caught.value).startswith(variable) and "dlq" in str(caught.value)
