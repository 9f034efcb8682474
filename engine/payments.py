"""The payment provider every path that charges a card uses: the configured one, or none.

Only the simulated card processor ships. It is used only when
``RATING_PAYMENT_SIMULATION`` says so (``dev`` sets ``succeed`` when it is unset), and
then the engine says so at start-up and in ``rating_payment_provider_info``. Without a
configured provider ``run`` refuses to start and ``accounts topup`` refuses to charge:
nothing may credit money that no card paid.
"""

from __future__ import annotations

import logging

from prometheus_client import Gauge

from rating.payments.provider import PaymentProvider
from rating.payments.simulated import SimulatedProvider
from rating.settings import Settings, SettingsError

log = logging.getLogger(__name__)

PAYMENT_PROVIDER_INFO = Gauge(
    "rating_payment_provider_info",
    "The payment provider this engine charges cards with (1); provider=simulated never"
    " takes real money.", ["provider", "mode"])

NO_PROVIDER = ("RATING_PAYMENT_SIMULATION: no payment provider is configured, and only the"
               " simulated one ships; set it (succeed, decline, delay:SECONDS, ...) to run"
               " with simulated card payments")


def require_provider(settings: Settings) -> str:
    """The configured simulation spec, or ``SettingsError`` (one line naming the variable)."""
    if settings.payment_simulation is None:
        raise SettingsError(NO_PROVIDER)
    return settings.payment_simulation


def configured_provider(settings: Settings) -> PaymentProvider:
    """The provider ``settings`` configure; ``SettingsError`` when there is none."""
    return SimulatedProvider.from_spec(require_provider(settings))


def announce_provider(settings: Settings, provider: PaymentProvider) -> str:
    """Record the provider in ``rating_payment_provider_info`` and log it; return the
    line the start-up banner shows."""
    PAYMENT_PROVIDER_INFO.clear()
    if not isinstance(provider, SimulatedProvider):  # handed in by the caller
        name = type(provider).__name__
        PAYMENT_PROVIDER_INFO.labels(name, "").set(1)
        log.info("payment provider: %s", name)
        return name
    # A simulated provider handed in by a test behaves as that test sets it.
    mode = settings.payment_simulation or "set by the caller"
    PAYMENT_PROVIDER_INFO.labels("simulated", mode).set(1)
    log.info("payment provider: SIMULATED (%s): no real card is charged", mode)
    return f"SIMULATED ({mode}): no real card is charged"
