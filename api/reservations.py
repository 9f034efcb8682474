"""Credit reservations over HTTP (contract §10): reserve, extend, release, and read one.

For voice switches (``RATING_SWITCH_TOKEN``) and the operator. A switch reserves when a
call starts, extends before the granted seconds run out, and releases when the call
ends without a final usage event; its usage events settle against the hold.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Histogram

from api.access import SWITCH, requires
from api.audit_trail import own_record
from api.http_json import field, json_body, json_response
from rating.core.errors import (
    ApiError,
    InsufficientCredit,
    NoRate,
    UnknownAccount,
    UnknownReservation,
)
from rating.core.identifiers import CREDIT_SOURCES, MAX_KEY_LENGTH, is_event_key
from rating.core.money import format_amount
from rating.core.pricing import TimedRate
from rating.core.rate import call_rate_for
from rating.stores.reservations import (
    CallLeg,
    Outcome,
    RateFor,
    Reservation,
    ReservationStore,
)
from rating.tariffbook.book import TariffStore

RESERVATION_REQUEST_SECONDS = Histogram(
    "rating_reservation_request_seconds",
    "Duration of reservation requests (reserve, extend, release), answered or refused.",
    ["operation"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
RESERVATION_GRANTS = Counter(
    "rating_reservation_grants_total", "Credit grants made, by operation (reserve, extend).",
    ["operation"])
RESERVATION_GRANTS_REFUSED = Counter(
    "rating_reservation_grants_refused_total",
    "Grants refused because the available credit does not cover one more increment.",
    ["operation"])
RESERVATIONS_RELEASED = Counter(
    "rating_reservations_released_total", "Reservations released by their switch.")
# The labelled children, bound once (a label lookup per request is measurable).
_SECONDS = {op: RESERVATION_REQUEST_SECONDS.labels(op) for op in ("reserve", "extend", "release")}
_GRANTED = {op: RESERVATION_GRANTS.labels(op) for op in ("reserve", "extend")}
_REFUSED = {op: RESERVATION_GRANTS_REFUSED.labels(op) for op in ("reserve", "extend")}

# Same rules as a usage event's number and keys (rating.core.events), so that whatever
# is reserved can also be billed and matched.
_E164 = re.compile(r"\+[1-9][0-9]{1,14}", re.ASCII)
_RESERVATION_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                             re.ASCII)


def _key(body: dict[str, Any], name: str) -> str:
    value: str = field(body, name, str)
    if not is_event_key(value):
        raise ApiError(400, "invalid_field",
                       f"{name}: 1 to {MAX_KEY_LENGTH} characters, without U+0000")
    return value


def _number(body: dict[str, Any], name: str) -> str:
    value: str = field(body, name, str)
    if not _E164.fullmatch(value):
        raise ApiError(400, "invalid_field",
                       f"{name}: not an E.164 number ('+' and 2 to 15 digits)")
    return value


def call_leg(body: dict[str, Any]) -> CallLeg:
    """The body of a reserve request, checked; ``ApiError`` (400) names the first problem."""
    source, call_id = _key(body, "source"), _key(body, "call_id")
    if source in CREDIT_SOURCES:  # its usage events would be refused: nothing could settle
        raise ApiError(400, "invalid_field",
                       f"source: {source!r} names the engine's own credits, not a switch")
    service = field(body, "service", str)
    if service == "call":
        return CallLeg(source, call_id, "call", _number(body, "destination"))
    if service == "tollfree":
        number = _number(body, "tollfree_number")
        direction = field(body, "direction", str)
        if direction not in ("inbound", "outbound"):
            raise ApiError(400, "invalid_field", "direction: expected inbound or outbound")
        return CallLeg(source, call_id, "tollfree", number, direction)
    raise ApiError(400, "invalid_field", "service: expected call or tollfree")


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def reservation_json(reservation: Reservation, available: int | None = None
                     ) -> dict[str, object]:
    leg = reservation.leg
    body: dict[str, object] = {
        "reservation_id": reservation.reservation_id,
        "account_id": reservation.account_id,
        "source": leg.source, "call_id": leg.call_id, "service": leg.service,
    }
    if leg.service == "call":
        body["destination"] = leg.number
    else:
        body.update(tollfree_number=leg.number, direction=leg.direction)
    body.update({
        "status": reservation.status,
        "granted_seconds": reservation.granted_seconds,
        "held": format_amount(reservation.held),
        "used": format_amount(reservation.used),
        "currency": reservation.currency,
        # A closed reservation holds nothing and ends when it closed: a switch that reads
        # only the grant's fields never takes one for a call it may still run.
        "expires_at": _iso(reservation.expires_at if reservation.closed_at is None
                           else reservation.closed_at),
        "created_at": _iso(reservation.created_at),
        "closed_at": None if reservation.closed_at is None else _iso(reservation.closed_at),
        "rate": {"per_minute": format_amount(reservation.rate.rate_per_minute),
                 "connect_fee": format_amount(reservation.rate.connect_fee),
                 "increment": str(reservation.rate.increment)},
    })
    if available is not None:
        body["available"] = format_amount(available)
    return body


def _outcome_json(outcome: Outcome) -> dict[str, object]:
    return reservation_json(outcome.reservation, outcome.available)


class ReservationApi:
    """The reservation routes; ``add_routes`` puts them under an account's path."""

    def __init__(self, store: ReservationStore, tariffs: TariffStore) -> None:
        self._store = store
        self._tariffs = tariffs

    def add_routes(self, router: web.UrlDispatcher, account_path: str) -> None:
        base = f"{account_path}/reservations"
        one = f"{base}/{{reservation_id}}"
        router.add_post(base, self.reserve, name="reservation.reserve")
        router.add_get(one, self.show, allow_head=False, name="reservation.read")
        router.add_post(f"{one}/extend", self.extend, name="reservation.extend")
        router.add_delete(one, self.release, name="reservation.release")

    def _rate_for(self, leg: CallLeg) -> RateFor:
        book = self._tariffs.book

        def rate_for(plan_id: str) -> TimedRate:
            if leg.service == "call":
                return call_rate_for(book, plan_id, leg.number)
            version = book.plan(plan_id)
            if version.tollfree is None:
                raise NoRate(f"plan {plan_id!r} does not price toll-free")
            return version.tollfree.lookup(leg.number, leg.direction or "inbound")[1]

        return rate_for

    @own_record
    @requires(SWITCH)
    async def reserve(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        leg = call_leg(await json_body(request))
        try:
            outcome = await self._store.reserve(_account_id(request), leg,
                                                self._rate_for(leg))
        except InsufficientCredit:
            _REFUSED["reserve"].inc()
            raise
        finally:
            _SECONDS["reserve"].observe(time.perf_counter() - started)
        if outcome.changed:
            _GRANTED["reserve"].inc()
        return json_response(_outcome_json(outcome), 201 if outcome.changed else 200)

    @own_record
    @requires(SWITCH)
    async def extend(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            outcome = await self._store.extend(_account_id(request),
                                               _reservation_id(request))
        except InsufficientCredit:
            _REFUSED["extend"].inc()
            raise
        finally:
            _SECONDS["extend"].observe(time.perf_counter() - started)
        _GRANTED["extend"].inc()
        return json_response(_outcome_json(outcome))

    @own_record
    @requires(SWITCH)
    async def release(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            outcome = await self._store.release(_account_id(request),
                                                _reservation_id(request))
        finally:
            _SECONDS["release"].observe(time.perf_counter() - started)
        if outcome.changed:
            RESERVATIONS_RELEASED.inc()
        return json_response(_outcome_json(outcome))

    @requires(SWITCH)
    async def show(self, request: web.Request) -> web.Response:
        reservation = await self._store.get(_account_id(request),
                                            _reservation_id(request))
        return json_response(reservation_json(reservation))


def _reservation_id(request: web.Request) -> str:
    value = request.match_info["reservation_id"]
    if not _RESERVATION_ID.fullmatch(value):  # ids are UUIDs: anything else is unknown
        raise UnknownReservation(f"no reservation {value[:64]!r} on this account")
    return value


def _account_id(request: web.Request) -> str:
    value = request.match_info["account_id"]
    if len(value) > MAX_KEY_LENGTH or "\x00" in value:  # no account has such an id
        raise UnknownAccount("unknown account")
    return value
