"""Settings that could only fail once the engine runs, refused before anything starts."""

from __future__ import annotations

from rating.settings import Settings, SettingsError


def check_startable(settings: Settings) -> None:
    """Settings that can only fail later, refused before anything starts: one line each."""
    if settings.metrics_port and settings.metrics_port == settings.http_port:
        raise SettingsError(f"RATING_METRICS_PORT: {settings.metrics_port} is RATING_HTTP_PORT"
                            " too; each needs its own port")
    if not settings.tariffs_dir.is_dir():
        raise SettingsError(f"RATING_TARIFFS_DIR: {settings.tariffs_dir} is not a directory"
                            " (the billing team's tariff files)")
    # A refused event published to the topic it came from is read and refused again,
    # forever; balance events read as usage are all refused.
    topics = (("RATING_USAGE_TOPIC", settings.usage_topic),
              ("RATING_DLQ_TOPIC", settings.dlq_topic),
              ("RATING_BALANCE_TOPIC", settings.balance_topic))
    for at, (variable, topic) in enumerate(topics):
        for earlier, used in topics[:at]:
            if topic == used:
                raise SettingsError(f"{variable}: {topic!r} is {earlier} too; each needs its"
                                    " own topic")
    if settings.recharge_group == settings.consumer_group:
        raise SettingsError(f"RATING_RECHARGE_GROUP: {settings.recharge_group!r} is"
                            " RATING_CONSUMER_GROUP too; each needs its own group")
