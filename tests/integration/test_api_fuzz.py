"""The account API fuzzed from its own OpenAPI document (schemathesis over Hypothesis).

Requests the document allows (positive) and requests it refuses (negative) go to a real
server over HTTP, with the operator token and the path's account pinned to a real
account, so they reach the logic: top-ups charge the simulated card, adjustments write
the ledger. Every answer must be documented (status, content type, headers, body schema),
never a 5xx; every request the document refuses must be refused (4xx); and money stays
explained by the ledger.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import CheckFunction
from schemathesis.specs.openapi import checks

from api.accounts import OPENAPI_CANDIDATES, HttpApi
from api.openapi_doc import openapi_document
from api.reservations import ReservationApi
from rating.core.money import parse_amount
from rating.payments.simulated import SimulatedProvider
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount
from rating.stores.recharges import RechargePolicy
from rating.stores.reservations import ReservationStore
from rating.stores.topups import TopupService
from rating.tariffbook.book import TariffStore
from tests.support import ledger_explains_balances, write_flat_tariffs

TOKEN = "fuzz-operator-token"
ACCOUNT = "acct-fuzz.1"
EXAMPLES = {GenerationMode.POSITIVE: 35, GenerationMode.NEGATIVE: 20}
CHECKS: dict[GenerationMode, list[CheckFunction]] = {
    mode: [checks.status_code_conformance, checks.content_type_conformance,
           checks.response_headers_conformance, checks.response_schema_conformance]
    for mode in GenerationMode}
CHECKS[GenerationMode.NEGATIVE].append(checks.negative_data_rejection)


@pytest.fixture
async def served(settings: Settings, pool: asyncpg.Pool,
                 tmp_path: Path) -> AsyncIterator[tuple[str, SimulatedProvider]]:
    provider = SimulatedProvider()
    configured = replace(settings, api_token=TOKEN, http_host="127.0.0.1", http_port=0)

    async def readiness() -> dict[str, bool]:
        return {"database": True, "kafka": True, "tariffs": True}

    tariffs = TariffStore(write_flat_tariffs(tmp_path / "tariffs"))
    reservations = ReservationStore(pool, cap_seconds=configured.reservation_seconds,
                                    grace_seconds=configured.reservation_grace_seconds)
    # Every route of the document is served, the reservations' too.
    api = HttpApi(store=AccountStore(pool), tariffs=tariffs,
                  topups=TopupService(pool, provider, RechargePolicy(settle_poll_s=0.1)),
                  settings=configured, readiness=readiness,
                  reservations=ReservationApi(reservations, tariffs))
    await api.start()
    await AccountStore(pool).create(NewAccount(ACCOUNT, "flat", "EUR", parse_amount("50")))
    try:
        yield f"http://127.0.0.1:{api.port}", provider
    finally:
        await api.close()


class Tally:
    """What was sent and answered, by operation and mode (read after the run)."""

    def __init__(self) -> None:
        self.requests = 0
        self.statuses: collections.Counter[tuple[str, str, int]] = collections.Counter()
        self._lock = threading.Lock()

    def record(self, case: Case, mode: GenerationMode, status: int) -> None:
        with self._lock:
            self.requests += 1
            self.statuses[(case.operation.label, mode.value, status)] += 1


STATEFUL_REFUSALS = {(409, "idempotency_conflict"), (409, "reservation_closed"),
                     (404, "unknown_reservation"), (402, "insufficient_credit"),
                     (422, "no_rate")}


def refusal_explained(case: Case, response: requests.Response) -> bool:
    code = response.json()["error"]["code"]
    body = case.body if isinstance(case.body, dict) else {}
    query = case.query or {}
    # What earlier requests did, or what the tariff prices, which no schema can state:
    # a key used before with another amount, a reservation closed, released or unknown,
    # a balance that covers no increment, a number the plan does not price.
    if (response.status_code, code) in STATEFUL_REFUSALS:
        return True
    if (response.status_code, code) == (400, "missing_field"):  # a key in neither place
        return "idempotency_key" not in body and "Idempotency-Key" not in (case.headers or {})
    if (response.status_code, code) == (400, "invalid_field"):  # both keys, different
        return "differ" in response.json()["error"]["message"]
    if (response.status_code, code) == (400, "invalid_query"):  # the service's number
        needed = {"call": "destination", "sms": "destination", "tollfree": "number"}
        return case.operation.path.endswith("/authorize") and needed.get(
            query.get("service", "")) not in query
    return False


def fuzz(base_url: str, document: dict[str, Any], tally: Tally) -> None:
    """Runs in a worker thread: schemathesis and requests are synchronous."""
    schema = schemathesis.openapi.from_dict(document)
    http = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        path = {"account_id": ACCOUNT} if "{account_id}" in operation.path else None
        for mode, examples in EXAMPLES.items():
            strategy = operation.as_strategy(
                generation_mode=mode, path_parameters=path,
                headers={"Authorization": f"Bearer {TOKEN}"})
            exercise(strategy, mode, examples, base_url, http, tally)


def exercise(strategy: Any, mode: GenerationMode, examples: int, base_url: str,
             http: requests.Session, tally: Tally) -> None:
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def one(case: Case) -> None:
        response = case.call(base_url=base_url, session=http, timeout=30)
        tally.record(case, mode, response.status_code)
        assert response.status_code < 500, (case.as_curl_command(), response.text)
        case.validate_response(response, checks=CHECKS[mode])
        if mode is GenerationMode.POSITIVE and response.status_code >= 300:
            # What the document allows, the server accepts, unless the refusal is one the
            # document states in words.
            assert refusal_explained(case, response), (case.as_curl_command(), response.text)

    try:
        one()
    except Unsatisfiable:
        # An operation with nothing to get wrong (no parameter, no body) has no negative case.
        if mode is not GenerationMode.NEGATIVE:
            raise


async def test_the_api_answers_as_its_document_says_to_fuzzed_requests(
        served: tuple[str, SimulatedProvider], pool: asyncpg.Pool) -> None:
    base_url, provider = served
    document = orjson.loads(openapi_document(OPENAPI_CANDIDATES[0].read_bytes(),
                                             Settings().max_amount))
    tally = Tally()
    await asyncio.wait_for(asyncio.to_thread(fuzz, base_url, document, tally), 150)

    by_status = collections.Counter(status for (_op, _mode, status) in tally.statuses.elements())
    print(f"\nfuzz: {tally.requests} requests; statuses {dict(sorted(by_status.items()))}")
    assert tally.requests >= 500
    # The fuzzing reached the logic: money moved, and the ledger explains every balance.
    reached = {op for (op, mode, status) in tally.statuses if status < 300}
    assert {"POST /v1/accounts/{account_id}/topups",
            "POST /v1/accounts/{account_id}/adjustments",
            "PUT /v1/accounts/{account_id}/auto-recharge"} <= reached, reached
    assert provider.captured(ACCOUNT)
    assert await pool.fetchval("SELECT count(*) FROM ledger WHERE account_id = $1",
                               ACCOUNT) > 0
    assert await ledger_explains_balances(pool) == []
