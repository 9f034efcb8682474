"""What the billing page shows, gathered through the API's own reads and put in the
customer's words: one ``BillingView`` per render (and per live update).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from api.account_billing import AccountBilling
from rating.core.currency import display_amount, display_money, presets_for
from rating.core.errors import PaymentUnavailable
from rating.core.money import format_amount, parse_amount
from rating.core.tariff import SERVICES
from rating.payments.provider import PaymentMethod
from rating.settings import Settings
from rating.stores.accounts import LedgerEntry
from rating.stores.billing_reads import Recharge, month_bounds, this_month
from rating.stores.recharge_requests import recent_recharges
from rating.stores.recharge_settings import account_view

SERVICE_LABELS = {"call": "Outbound calls", "tollfree": "Toll-free numbers", "sms": "SMS",
                  "stt": "Speech to Text"}
_ENTRY_LABELS = {"call": "Outbound call", "tollfree": "Toll-free number", "sms": "SMS",
                 "stt": "Speech to Text"}
_KIND_LABELS = {"topup": "Credit added by card", "recharge": "Automatic adding credit",
                "adjustment": "Adjustment"}
# The provider's decline reasons (and why automatic recharge stopped), as a customer reads them.
REASONS = {
    "card_declined": "The card was declined.",
    "expired_card": "The card has expired.",
    "no_payment_method": "No card is saved.",
    "insufficient_funds": "The card has insufficient funds.",
    "lost_card": "The card was reported lost.",
    "stolen_card": "The card was reported stolen.",
    "closed_account": "The card's account is closed.",
    "attempts_exhausted": "Every attempt to charge the card was declined.",
    "card_closed": "The card's account is closed.",
    "hard_decline": "The card was refused for good (lost, stolen, expired or closed).",
}
# Why a recharge was not made although it was asked for (``recharges.last_reason``).
_CANCELLED = {
    "cancelled: auto-recharge was turned off": "cancelled: automatic adding credit was"
                                                " turned off.",
    "cancelled: balance is back at or above the threshold": "not needed (the balance was"
                                                            " back above the threshold).",
    "cancelled: the balance would exceed its bound": "not made (the balance would pass its"
                                                     " limit).",
}
_SETTLED = ("succeeded", "failed", "cancelled")
RECENT_ENTRIES = 10
RECENT_PAYMENTS = 5


def reason_text(reason: str | None) -> str:
    if not reason:
        return "The payment was declined."
    known = REASONS.get(reason)
    if known is not None:
        return known
    words = reason.replace("_", " ").strip()
    return words[:1].upper() + words[1:] + ("" if words.endswith(".") else ".")


def recharge_outcome(status: str, reason: str | None) -> str:
    """How a settled recharge ended, as "Last recharge: AMOUNT on WHEN, ..." goes on."""
    if status == "succeeded":
        return "credited."
    if status == "cancelled":
        return _CANCELLED.get(reason or "", "cancelled.")
    return "did not go through: " + reason_text(reason)


def when_text(when: datetime | str | None) -> str:
    if isinstance(when, str):
        try:
            parsed = datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError:
            return when
        return when_text(parsed)
    if when is None:
        return ""
    return when.astimezone(UTC).strftime("%d %b %Y %H:%M")


@dataclass(frozen=True, slots=True)
class Money:
    micros: int
    currency: str

    @property
    def text(self) -> str:
        """``12.3456 EUR``: exact, with the currency's decimals at least."""
        return display_money(self.micros, self.currency)

    @property
    def number(self) -> str:
        return display_amount(self.micros, self.currency)

    @property
    def api(self) -> str:
        """The API's decimal string: ``12.345600``."""
        return format_amount(self.micros)


@dataclass(frozen=True, slots=True)
class Card:
    saved: bool
    brand: str = ""
    last4: str = ""
    expiry: str = ""
    expired: bool = False
    unknown: bool = False  # the provider did not answer: a payment may still work


@dataclass(frozen=True, slots=True)
class RechargeLine:
    amount: Money
    status: str
    attempt: int
    reason: str | None
    when: str


@dataclass(frozen=True, slots=True)
class AutoRecharge:
    enabled: bool
    amount: Money | None
    below: Money
    amount_input: str
    below_input: str
    max_per_day: int | None
    disabled_reason: str | None
    in_flight: RechargeLine | None
    last: RechargeLine | None
    # On, below the threshold, and the day's recharges all made (CONTRACT §12): when
    # the next one can be.
    limited_until: str | None = None


@dataclass(frozen=True, slots=True)
class Payment:
    amount: Money
    status: str  # requested | pending | succeeded | declined
    reason: str | None
    when: str


@dataclass(frozen=True, slots=True)
class UsageLine:
    service: str
    label: str
    debited: Money
    accrued: Money
    uses: int  # calls, messages or jobs: a call sent as several events counts once
    on_invoice: bool


@dataclass(frozen=True, slots=True)
class Entry:
    when: str
    what: str
    country: str
    duration: str
    amount: Money
    accrued: Money
    on_invoice: bool


@dataclass(frozen=True, slots=True)
class BillingView:
    account: dict[str, Any]  # the API's account object, as GET /v1/accounts/{id} has it
    account_id: str
    plan: str
    currency: str
    balance: Money
    threshold: Money
    card: Card
    pay_blocked: str | None  # why a payment cannot be made now, or None
    auto: AutoRecharge
    payments: list[Payment]
    presets: list[Money]
    max_amount: Money
    usage: list[UsageLine]
    usage_total: Money
    entries: list[Entry]
    month: str
    month_label: str
    stt_on_invoice: bool

    @property
    def exhausted(self) -> bool:
        """``balance.exhausted``: zero or less; switches stop new billable usage."""
        return self.balance.micros <= 0

    @property
    def low(self) -> bool:
        return 0 < self.balance.micros < self.threshold.micros


def _card(method: PaymentMethod | None, today: datetime) -> Card:
    if method is None:
        return Card(saved=False)
    return Card(True, method.brand, method.last4, method.expiry, method.expired(today.date()))


def _recharge_line(r: Recharge | None, currency: str) -> RechargeLine | None:
    if r is None:
        return None
    return RechargeLine(Money(r.amount, currency), r.status, r.attempt, r.reason,
                        when_text(r.settled_at or r.created_at))


def _last_recharge(auto: dict[str, Any], account: dict[str, Any],
                   mine: RechargeLine | None, currency: str) -> RechargeLine | None:
    """The account's own ``last_recharge`` when the engine reports one, else ours."""
    last = account.get("last_recharge", auto.get("last_recharge"))
    if not isinstance(last, dict) or str(last.get("status")) not in _SETTLED:
        return mine  # one in flight is shown as such, not as the last one
    try:
        amount = parse_amount(str(last.get("amount")))
    except ValueError:
        return mine
    return RechargeLine(Money(amount, currency), str(last.get("status") or last.get("outcome")),
                        int(last.get("attempt") or 1), last.get("reason"),
                        when_text(last.get("settled_at") or last.get("at")
                                  or last.get("created_at")))


def _duration(entry: LedgerEntry) -> str:
    """How long (or how much) the usage was, from the ledger row's rated detail."""
    detail = getattr(entry, "detail", None)  # rows rated before details were kept have none
    if not isinstance(detail, dict):
        return ""
    seconds: object = None
    if isinstance(detail.get("to_s"), int) and isinstance(detail.get("from_s"), int):
        seconds = detail["to_s"] - detail["from_s"]
    elif isinstance(detail.get("seconds"), int):
        seconds = detail["seconds"]
    if isinstance(seconds, int):
        return f"{seconds // 60}:{seconds % 60:02d}"
    segments = detail.get("segments")
    if isinstance(segments, int):
        return f"{segments} segment" + ("" if segments == 1 else "s")
    return ""


def _entry(e: LedgerEntry) -> Entry:
    currency = e.currency.strip()
    if e.kind in ("usage", "invoice") and e.service in _ENTRY_LABELS:
        what = _ENTRY_LABELS[e.service]
    else:
        what = _KIND_LABELS.get(e.kind, e.kind)
        if e.kind == "adjustment" and e.reason:
            what = f"{what}: {e.reason}"
    return Entry(when_text(e.event_time or e.recorded_at), what, e.country or "", _duration(e),
                 Money(e.amount, currency), Money(e.accrued, currency), e.kind == "invoice")


def _input(micros: int | None, currency: str) -> str:
    return "" if not micros else display_amount(micros, currency)


async def billing_view(reads: AccountBilling, settings: Settings, account_id: str,
                       now: datetime | None = None) -> BillingView:
    """Everything the page shows for ``account_id``, read the way the API reads it."""
    now = now or datetime.now(UTC)
    store = reads.store
    account = await store.get(account_id)
    shown = await account_view(store.pool, account)  # the API's own account object
    currency = account.currency.strip()
    month = this_month(now)
    since, until = month_bounds(month)
    totals = await store.usage_by_service(account_id, since, until)
    usage = []
    for service in SERVICES:
        debited, accrued, _events, uses = totals.get(service, (0, 0, 0, 0))
        usage.append(UsageLine(service, SERVICE_LABELS.get(service, service),
                               Money(debited, currency), Money(accrued, currency), uses,
                               service == "stt" and account.stt_billing == "invoice"))
    entries = [_entry(e) for e in await store.recent_ledger(account_id, RECENT_ENTRIES)]
    try:
        card = _card(await reads.payment_method(account_id), now)
    except PaymentUnavailable:
        card = Card(saved=False, unknown=True)
    recharges = await reads.recharges(account_id)
    limited_until = None
    if (account.auto_recharge_enabled and recharges.in_flight is None
            and account.balance < account.low_balance_threshold):
        async with store.pool.acquire() as conn:
            recent = await recent_recharges(conn, account_id, account.auto_recharge_max_per_day)
        if recent.succeeded >= account.auto_recharge_max_per_day and recent.next_allowed_at:
            limited_until = when_text(recent.next_allowed_at)
    payments = [Payment(Money(t.amount, currency), t.status, t.reason, when_text(t.created_at))
                for t in await reads.recent_topups(account_id, RECENT_PAYMENTS)]
    auto = shown.get("auto_recharge")
    auto_json: dict[str, Any] = dict(auto) if isinstance(auto, dict) else {}
    max_per_day = auto_json.get("max_per_day")
    disabled = auto_json.get("disabled_reason")
    return BillingView(
        account=shown, account_id=account.id, plan=account.plan_id, currency=currency,
        balance=Money(account.balance, currency),
        threshold=Money(account.low_balance_threshold, currency),
        card=card, pay_blocked=_pay_blocked(card) or _payment_on_its_way(payments),
        auto=AutoRecharge(
            enabled=account.auto_recharge_enabled,
            amount=(None if account.auto_recharge_amount is None
                    else Money(account.auto_recharge_amount, currency)),
            below=Money(account.low_balance_threshold, currency),
            amount_input=_input(account.auto_recharge_amount, currency),
            # A threshold of 0 is a setting like any other once automatic recharge is on.
            below_input=(display_amount(account.low_balance_threshold, currency)
                         if account.auto_recharge_enabled
                         else _input(account.low_balance_threshold, currency)),
            max_per_day=max_per_day if isinstance(max_per_day, int) else None,
            disabled_reason=(disabled if isinstance(disabled, str) and disabled
                             and not account.auto_recharge_enabled else None),
            in_flight=_recharge_line(recharges.in_flight, currency),
            last=_last_recharge(auto_json, shown, _recharge_line(recharges.last, currency),
                                currency),
            limited_until=limited_until),
        payments=payments,
        presets=[Money(p, currency) for p in presets_for(currency, dict(settings.topup_presets))],
        max_amount=Money(settings.max_amount, currency),
        usage=usage,
        usage_total=Money(sum(u.debited.micros for u in usage), currency),
        entries=entries, month=month, month_label=since.strftime("%B %Y"),
        stt_on_invoice=account.stt_billing == "invoice")


def _payment_on_its_way(payments: list[Payment]) -> str | None:
    """A one-time payment not settled yet: paying again from a reloaded page (a new key)
    would be a second payment, while the customer cannot know whether the first took."""
    for p in payments:
        if p.status in ("requested", "pending"):
            return (f"Your payment of {p.amount.text} is still being processed: Pay Now is"
                    " available again once it has completed (it shows below).")
    return None


def _pay_blocked(card: Card) -> str | None:
    if card.unknown:
        return None
    if not card.saved:
        return "No card is saved, so a payment cannot be made. Save a card first."
    if card.expired:
        return (f"The saved card expired at the end of {card.expiry}, so a payment cannot"
                " be made. Update the card first.")
    return None
