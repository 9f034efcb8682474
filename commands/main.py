"""The ``rating-engine`` command line (CONTRACT §7): parses, configures, dispatches.

This is the only module that reads ``os.environ``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from commands import accounts, cli_audit
from commands.accounts import stderr_line
from rating.core.errors import CommandError, RatingError
from rating.settings import Settings, SettingsError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


_DECIMAL = re.compile(r"-?[0-9]{1,30}(\.[0-9]{1,9})?", re.ASCII)


def _integer(text: str) -> int:
    """An option's integer: ASCII digits (``int()`` alone also takes ``1_000`` and other
    scripts' digits); its range is checked where it is used, naming the option."""
    if not re.fullmatch(r"-?[0-9]{1,30}", text.strip(), re.ASCII):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(text)


def _decimal(text: str) -> float:
    if not _DECIMAL.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}")
    return float(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rating-engine",
        description="Real-time rating and prepaid-credit deduction for a cloud phone system.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    dev = verbs.add_parser("dev", help="engine + embedded services + simulated switch traffic")
    dev.add_argument("--rate", default="200/s", help="simulated events per second (N/s)")
    dev.add_argument("--accounts", type=_integer, default=50, help="demo accounts")
    dev.add_argument("--no-reservations", dest="reservations", action="store_false",
                     help="simulated calls without credit reservations (default: with)")
    verbs.add_parser("run", help="engine against the configured services")
    verbs.add_parser("migrate", help="apply database migrations")

    sim = verbs.add_parser("simulate", help="publish realistic usage like a voice switch")
    sim.add_argument("--rate", default="200/s", help="events per second (N/s)")
    sim.add_argument("--accounts", type=_integer, default=50, help="accounts acct-0001..N")
    sim.add_argument("--duration", type=_decimal, default=None, help="seconds, default forever")
    sim.add_argument("--reservations", action="store_true",
                     help="place calls through credit reservations (needs RATING_SWITCH_TOKEN)")
    sim.add_argument("--api", default=None,
                     help="account API URL for --reservations (default http://127.0.0.1:"
                          "RATING_HTTP_PORT)")

    tariffs = verbs.add_parser("tariffs", help="tariff files").add_subparsers(
        dest="tariffs_verb", required=True, metavar="COMMAND")
    validate = tariffs.add_parser("validate", help="check tariff files; exit 1 on any error")
    validate.add_argument("dir", nargs="?", type=Path, default=None)

    rate = verbs.add_parser("rate", help="price usage events (JSON lines) from stdin")
    rate.add_argument("--plan", required=True)

    acc = verbs.add_parser("accounts", help="manage accounts").add_subparsers(
        dest="accounts_verb", required=True, metavar="COMMAND")
    create = acc.add_parser("create", help="create an account")
    create.add_argument("id")
    create.add_argument("--plan", required=True)
    create.add_argument("--balance", default="0")
    create.add_argument("--low-balance-threshold", default="0")
    imp = acc.add_parser("import", help="bulk create from id,plan,balance[,low_balance_threshold]")
    imp.add_argument("file", type=Path)
    show = acc.add_parser("show", help="one account as JSON")
    show.add_argument("id")
    topup = acc.add_parser("topup", help="one-time credit, once per idempotency key")
    topup.add_argument("id")
    topup.add_argument("amount")
    topup.add_argument("--idempotency-key", required=True)
    auto = acc.add_parser("auto-recharge", help="add AMOUNT when the balance falls below")
    auto.add_argument("id")
    auto.add_argument("--amount")
    auto.add_argument("--below")
    auto.add_argument("--off", action="store_true")
    auto.add_argument("--max-per-day", type=_integer, default=None, metavar="N",
                      help="at most N automatic recharges in any 24 hours (default 5)")
    auto.add_argument("--alert-thresholds", default=None, metavar="A,B,...",
                      help="balance.alert when the balance falls below each ('' for none)")
    stt = acc.add_parser("stt-billing", help="bill speech-to-text from credit or on the invoice")
    stt.add_argument("id")
    stt.add_argument("mode", choices=["credit", "invoice"])
    adjust = acc.add_parser("adjust", help="signed manual adjustment by support, with a reason")
    adjust.add_argument("id")
    adjust.add_argument("amount")
    adjust.add_argument("--reason", required=True)
    adjust.add_argument("--idempotency-key", required=True)
    link = acc.add_parser("portal-link", help="a customer session's billing-page URL")
    link.add_argument("id")
    link.add_argument("--ttl", type=_integer, default=None, help="seconds (default 900)")

    from commands import events

    events.add_verbs(verbs)
    events.add_account_verbs(acc)

    trail = verbs.add_parser("audit", help="the audit trail, oldest first, as JSON lines")
    trail.add_argument("--account", default=None, help="one account's writes only")
    trail.add_argument("--limit", type=_integer, default=100, help="the newest N (default 100)")
    return parser


def _dispatch(args: argparse.Namespace, settings: Settings) -> Coroutine[Any, Any, int] | int:
    out = sys.stdout
    if args.verb == "migrate":
        return accounts.cmd_migrate(settings, out)
    if args.verb == "tariffs":
        from commands.tariffs import validate_command

        return validate_command(args.dir or settings.tariffs_dir, out)
    if args.verb == "rate":
        from commands.tariffs import rate_command

        return rate_command(settings.tariffs_dir, args.plan, sys.stdin, out)
    if args.verb == "run":
        from engine.assembly import serve
        from engine.payments import require_provider

        require_provider(settings)  # refused before anything starts: one line, exit 2
        return serve(settings)
    if args.verb in ("dev", "simulate"):
        from demo.simulator import check_options

        try:
            check_options(args)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    if args.verb == "dev":
        from demo.dev import dev_command

        return dev_command(settings, args)
    if args.verb == "simulate":
        from demo.call_control import simulate_command

        return simulate_command(settings, args)
    if args.verb in ("events", "dlq", "publish"):
        from commands import events

        return events.dispatch(args, settings)
    if args.verb == "audit":
        from commands.sessions import cmd_audit

        account_id = None if args.account is None else accounts.account_arg(args.account)
        return cmd_audit(settings, out, account_id, args.limit)
    return _dispatch_accounts(args, settings)


# Account verbs that write, and the action their audit row names.
_AUDITED = {"create": "account.create", "import": "account.import", "topup": "topup",
            "auto-recharge": "auto_recharge.set", "stt-billing": "stt_billing.set",
            "adjust": "adjustment", "portal-link": "session.issue"}


def _dispatch_accounts(args: argparse.Namespace,
                       settings: Settings) -> Coroutine[Any, Any, int] | int:
    out = sys.stdout
    verb = args.accounts_verb
    # An id outside the account-id rule names no account: refused in one line before
    # anything runs (every verb but import names one).
    if getattr(args, "id", None) is not None:
        args.id = accounts.account_arg(args.id)
    if verb in _AUDITED:
        detail = {k: v for k, v in vars(args).items()
                  if k not in ("verb", "accounts_verb", "verbose", "id") and v is not None}
        cli_audit.expect_write(_AUDITED[verb], getattr(args, "id", None), **detail)
    if verb == "statement":
        from commands.events import dispatch_statement

        return dispatch_statement(args, settings)
    if verb == "portal-link":
        from commands.sessions import cmd_portal_link

        return cmd_portal_link(settings, out, args.id, args.ttl)
    if verb == "create":
        return accounts.cmd_create(settings, out, args.id, args.plan, args.balance,
                                   args.low_balance_threshold)
    if verb == "import":
        return accounts.cmd_import(settings, out, args.file)
    if verb == "show":
        return accounts.cmd_show(settings, out, args.id)
    if verb == "topup":
        return accounts.cmd_topup(settings, out, args.id, args.amount, args.idempotency_key)
    if verb == "auto-recharge":
        return accounts.cmd_auto_recharge(settings, out, args.id, args.amount, args.below,
                                          args.off, args.max_per_day, args.alert_thresholds)
    if verb == "stt-billing":
        return accounts.cmd_stt_billing(settings, out, args.id, args.mode)
    return accounts.cmd_adjust(settings, out, args.id, args.amount, args.reason,
                               args.idempotency_key)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    try:
        settings = Settings.from_env(os.environ)
        work = _dispatch(args, settings)
        return work if isinstance(work, int) else asyncio.run(work)
    except SettingsError as exc:
        stderr_line(str(exc))
        return EXIT_USAGE
    except (CommandError, RatingError) as exc:
        stderr_line(str(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`dlq list | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
