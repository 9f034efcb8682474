"""``accounts statement ID --month YYYY-MM [--csv]``: a month's charges and credits, explained."""

from __future__ import annotations

from typing import TextIO

import orjson

from commands.accounts import store_for
from rating.settings import Settings
from rating.stores.statements import current_month, month_bounds, monthly_statement


async def cmd_statement(settings: Settings, out: TextIO, account_id: str, month: str | None,
                        as_csv: bool) -> int:
    month = month or current_month()
    month_bounds(month)  # a malformed month is refused before the database is reached
    async with store_for(settings) as store:
        statement = await monthly_statement(store.pool, account_id, month)
    if as_csv:
        out.write(statement.as_csv().replace("\r\n", "\n"))
    else:
        out.write(orjson.dumps(statement.as_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
