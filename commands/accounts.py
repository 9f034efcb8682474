"""``rating-engine accounts …`` and ``migrate``: short-lived commands against the database."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TextIO

import asyncpg
import orjson

from commands import cli_audit
from commands.recharge_args import recharge_limit_args
from engine.payments import configured_provider
from engine.services import database_url, migrate_database, migrate_database_url
from rating.core.amount_rules import AmountRule, AmountSign
from rating.core.errors import CommandError, PermanentError, RequestError
from rating.core.identifiers import (
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_REASON_LENGTH,
    check_account_id,
    check_text,
    credit_key,
)
from rating.core.money import parse_amount
from rating.payments.provider import PaymentProvider
from rating.settings import Settings
from rating.stores.accounts import AccountStore, NewAccount, SttBilling, account_json
from rating.stores.db import create_pool
from rating.stores.migrations import migrate
from rating.stores.recharge_settings import account_view
from rating.stores.topups import TopupService
from rating.tariffbook.csv_rates import decoded_text
from rating.tariffbook.files import load_tariffs


def amount_arg(settings: Settings, name: str, text: str, sign: AmountSign) -> int:
    """An amount argument within ``sign`` and the largest single amount (RATING_MAX_AMOUNT)."""
    try:
        micros = parse_amount(text)
    except ValueError as exc:
        raise CommandError(f"{name}: {exc}") from None
    try:
        return AmountRule(sign, settings.max_amount).check(name, micros)
    except RequestError as exc:
        raise CommandError(exc.message) from None


def account_arg(account_id: str) -> str:
    try:
        return check_account_id(account_id)
    except RequestError as exc:
        raise CommandError(exc.message) from None


def text_arg(name: str, text: str, *, max_length: int) -> str:
    try:
        return check_text(name, text, max_length=max_length)
    except RequestError as exc:
        raise CommandError(exc.message) from None


@asynccontextmanager
async def store_for(settings: Settings) -> AsyncIterator[AccountStore]:
    async with database_url(settings) as (dsn, _pid):
        pool = await create_pool(dsn, max_size=2)
        try:
            await migrate_database(pool)
            try:
                yield AccountStore(pool)
            except BaseException as exc:
                await cli_audit.record_outcome(pool, exc)
                raise
            await cli_audit.record_outcome(pool, None)
        finally:
            await pool.close()


def _print_json(out: TextIO, value: object) -> None:
    out.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _plan_currency(settings: Settings, plan_id: str) -> str:
    book = load_tariffs(settings.tariffs_dir)
    try:
        return book.currency(plan_id)
    except PermanentError as exc:
        raise CommandError(f"--plan: {exc.message}") from None


async def cmd_migrate(settings: Settings, out: TextIO) -> int:
    async with migrate_database_url(settings) as (dsn, _pid):
        conn = await asyncpg.connect(dsn)
        try:
            applied = await migrate(conn)
        finally:
            await conn.close()
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied)
    out.write(f"applied: {names}\n" if applied else "database is up to date\n")
    return 0


async def cmd_create(settings: Settings, out: TextIO, account_id: str, plan: str,
                     balance: str, threshold: str) -> int:
    new = NewAccount(account_arg(account_id), plan, _plan_currency(settings, plan),
                     amount_arg(settings, "--balance", balance, "signed"),
                     amount_arg(settings, "--low-balance-threshold", threshold,
                                "non_negative"))
    async with store_for(settings) as store:
        _print_json(out, account_json(await store.create(new)))
    return 0


async def cmd_show(settings: Settings, out: TextIO, account_id: str) -> int:
    async with store_for(settings) as store:
        _print_json(out, await account_view(store.pool, await store.get(account_id)))
    return 0


async def cmd_topup(settings: Settings, out: TextIO, account_id: str, amount: str,
                    key: str, provider: PaymentProvider | None = None) -> int:
    """Charge the card through the configured provider (RATING_PAYMENT_SIMULATION; refused
    when there is none) unless ``provider`` is given; credit once per key."""
    account_arg(account_id)
    micros = amount_arg(settings, "AMOUNT", amount, "positive")
    text_arg("--idempotency-key", key, max_length=MAX_IDEMPOTENCY_KEY_LENGTH)
    provider = provider or configured_provider(settings)
    async with store_for(settings) as store:
        topups = TopupService(store.pool, provider)
        result = await topups.topup(account_id, micros, key)
    body = account_json(result.account)
    # "pending": the card payment lands later; the running engine credits it then.
    body["payment"] = result.status
    body["credited"] = result.credited
    _print_json(out, body)
    return 0


async def cmd_auto_recharge(settings: Settings, out: TextIO, account_id: str,
                            amount: str | None, below: str | None, off: bool,
                            max_per_day: int | None = None,
                            alert_thresholds: str | None = None) -> int:
    """``--amount A --below T`` turns it on, ``--off`` off; ``--max-per-day`` and
    ``--alert-thresholds`` alone change only themselves."""
    account_arg(account_id)
    if off and (amount is not None or below is not None):
        raise CommandError("auto-recharge: --off turns it off and takes no --amount or"
                           " --below")
    limits = recharge_limit_args(max_per_day, alert_thresholds)
    turn_on = None
    if not off and (amount is not None or below is not None or not limits.given):
        if amount is None or below is None:
            raise CommandError("auto-recharge needs --amount and --below, or --off")
        turn_on = (amount_arg(settings, "--amount", amount, "positive"),
                   amount_arg(settings, "--below", below, "non_negative"))
    async with store_for(settings) as store:
        await limits.apply(store.pool, account_id)
        if off:
            account = await store.set_auto_recharge(account_id, amount=None, below=None)
        elif turn_on is not None:
            account = await store.set_auto_recharge(account_id, amount=turn_on[0],
                                                    below=turn_on[1])
        else:
            account = await store.get(account_id)
        _print_json(out, await account_view(store.pool, account))
    return 0


async def cmd_stt_billing(settings: Settings, out: TextIO, account_id: str,
                          mode: SttBilling) -> int:
    account_arg(account_id)
    async with store_for(settings) as store:
        _print_json(out, account_json(await store.set_stt_billing(account_id, mode)))
    return 0


async def cmd_adjust(settings: Settings, out: TextIO, account_id: str, amount: str,
                     reason: str, key: str) -> int:
    account_arg(account_id)
    micros = amount_arg(settings, "AMOUNT", amount, "non_zero")
    reason = text_arg("--reason", reason.strip(), max_length=MAX_REASON_LENGTH)
    text_arg("--idempotency-key", key, max_length=MAX_IDEMPOTENCY_KEY_LENGTH)
    async with store_for(settings) as store:
        result = await store.credit(account_id, kind="adjustment", source="adjustment",
                                    key=credit_key(account_id, key), amount=micros,
                                    reason=reason)
        body = account_json(result.account)
        body["applied"] = result.applied
        _print_json(out, body)
    return 0


def read_import_file(path: Path, settings: Settings) -> list[NewAccount]:
    """Parse ``id,plan,balance[,low_balance_threshold]``; every bad row is a file:line error."""
    book = load_tariffs(settings.tariffs_dir)
    errors: list[str] = []
    accounts: list[NewAccount] = []
    seen: set[str] = set()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror}") from None
    # A spreadsheet's export: its byte-order mark dropped, another encoding refused at
    # its line, as in tariff files.
    text = decoded_text(data, str(path), lambda file, line, why: errors.append(
        f"{file}:{line}: {why}"))
    if text is None:
        raise CommandError(errors[0])
    with io.StringIO(text, newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = [h.strip() for h in next(reader, [])]
            if header[:3] != ["id", "plan", "balance"] or header[3:] not in (
                    [], ["low_balance_threshold"]):
                raise CommandError(
                    f"{path}:1: header must be id,plan,balance[,low_balance_threshold]")
            for row in reader:
                line = reader.line_num
                if not row or not "".join(row).strip():
                    continue
                try:
                    accounts.append(_import_row(settings, row, header, book.currency, seen))
                except (RequestError, PermanentError) as exc:
                    errors.append(f"{path}:{line}: {exc}")
        except csv.Error as exc:  # a field past the csv module's limit, a stray NUL
            errors.append(f"{path}:{reader.line_num or 1}: malformed CSV: {exc}")
    if errors:
        raise CommandError("\n".join(errors))
    return accounts


def _import_row(settings: Settings, row: list[str], header: list[str],
                currency_of: Callable[[str], str], seen: set[str]) -> NewAccount:
    if len(row) != len(header):
        raise CommandError(f"expected {len(header)} columns, got {len(row)}")
    account_id, plan, balance = (c.strip() for c in row[:3])
    if not account_id:
        raise CommandError("empty id")
    account_arg(account_id)
    if account_id in seen:
        raise CommandError(f"duplicate id {account_id!r}")
    seen.add(account_id)
    threshold = row[3].strip() if len(row) > 3 and row[3].strip() else "0"
    return NewAccount(account_id, plan, currency_of(plan),
                      amount_arg(settings, "balance", balance, "signed"),
                      amount_arg(settings, "low_balance_threshold", threshold, "non_negative"))


async def cmd_import(settings: Settings, out: TextIO, path: Path) -> int:
    accounts = read_import_file(path, settings)
    async with store_for(settings) as store:
        created, existing = await store.create_many(accounts)
    out.write(f"created: {created}, existing (untouched): {existing}\n")
    return 0


def stderr_line(message: str) -> None:
    sys.stderr.write(f"rating-engine: error: {message}\n")
