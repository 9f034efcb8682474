"""Settings from the environment: defaults, tuning variables, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rating.settings import Settings, SettingsError


def test_an_empty_environment_gives_the_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.database_url is None and settings.kafka_bootstrap is None
    assert (settings.batch_max_events, settings.fetch_max_wait_ms) == (10_000, 30)
    assert settings.data_dir == Path(".rating")


def test_tuning_variables_are_read() -> None:
    settings = Settings.from_env({
        "RATING_BATCH_MAX_EVENTS": "500", "RATING_FETCH_MAX_WAIT_MS": "100",
        "RATING_KAFKA_BOOTSTRAP": "k1:9092,k2:9093", "RATING_METRICS_PORT": "0",
    })
    assert (settings.batch_max_events, settings.fetch_max_wait_ms) == (500, 100)
    assert settings.kafka_bootstrap == ("k1:9092", "k2:9093")
    assert settings.metrics_port == 0


@pytest.mark.parametrize(("name", "value"), [
    ("RATING_FETCH_MAX_WAIT_MS", "0"),
    ("RATING_FETCH_MAX_WAIT_MS", "fast"),
    ("RATING_BATCH_MAX_EVENTS", "-1"),
    ("RATING_BATCH_MAX_EVENTS", "100000"),  # a batch's charges must sum within a bigint
    ("RATING_METRICS_PORT", "70000"),
    ("RATING_KAFKA_BOOTSTRAP", "nonsense"),
    ("RATING_DATABASE_URL", "mysql://x"),
    # Accepted once, then failing where they were used: the fetcher (a Kafka int32,
    # billing stopped while ready), the outbox purge (a PostgreSQL interval), the
    # shutdown watchdog (a timer).
    ("RATING_FETCH_MAX_WAIT_MS", "2147483648"),
    ("RATING_OUTBOX_RETENTION_HOURS", "3000000000"),
    ("RATING_SHUTDOWN_GRACE_SECONDS", "10000000000"),
    ("RATING_TARIFF_POLL_SECONDS", "100000000000000000000"),
    # Digits are ASCII digits: int() alone takes these.
    ("RATING_HTTP_PORT", "\u0668\u0660\u0668\u0660"),
    ("RATING_HTTP_PORT", "8_080"),
    ("RATING_BATCH_MAX_EVENTS", "+5"),
    ("RATING_KAFKA_BOOTSTRAP", "broker:\u0669\u0660\u0669\u0662"),
    # Names a Kafka broker refuses at creation.
    ("RATING_USAGE_TOPIC", "bad!topic"),
    ("RATING_DLQ_TOPIC", ".."),
    ("RATING_BALANCE_TOPIC", "balance events"),
    ("RATING_PAYMENT_SIMULATION", "delay:\u0665"),
    ("RATING_PAYMENT_SIMULATION", "delay:1e2"),
])
def test_a_bad_value_is_one_line_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}: ") and "\n" not in message
    assert repr(value) in message


def test_a_long_bad_value_is_quoted_by_its_start() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"RATING_TARIFF_POLL_SECONDS": "9" * 5000})
    message = str(caught.value)
    assert "at most 86400" in message and len(message) < 200
    with pytest.raises(SettingsError):
        Settings.from_env({"RATING_BALANCE_TOPIC": "x" * 250})  # Kafka's limit is 249
    assert Settings.from_env({"RATING_BALANCE_TOPIC": "x" * 249}).balance_topic == "x" * 249


def test_reservation_settings() -> None:
    assert (Settings().reservation_seconds, Settings().reservation_grace_seconds) == (300, 60)
    settings = Settings.from_env({"RATING_RESERVATION_SECONDS": "120",
                                  "RATING_RESERVATION_GRACE_SECONDS": "0",
                                  "RATING_SWITCH_TOKEN": "sw"})
    assert (settings.reservation_seconds, settings.reservation_grace_seconds) == (120, 0)
    assert settings.switch_token == "sw"
    for name, value in (("RATING_RESERVATION_SECONDS", "0"),
                        ("RATING_RESERVATION_SECONDS", "86401"),
                        ("RATING_RESERVATION_SECONDS", "5m"),
                        ("RATING_RESERVATION_GRACE_SECONDS", "-1")):
        with pytest.raises(SettingsError) as caught:
            Settings.from_env({name: value})
        assert str(caught.value).startswith(f"{name}: ") and repr(value) in str(caught.value)
    with pytest.raises(SettingsError):
        Settings(reservation_seconds=0)
