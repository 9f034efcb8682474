"""Identifiers and text that reach the database: what may be stored, and how keys are built.

- Account ids are 1-128 characters of ``A-Z a-z 0-9 . _ : -`` (CONTRACT §8); the
  same rule is a CHECK on ``accounts.id`` (migration 0005) and refuses usage events
  whose subject is outside it.
- PostgreSQL ``text`` cannot hold U+0000, and a lone surrogate (U+D800-U+DFFF, which
  a header that is not UTF-8 decodes to) cannot be encoded as UTF-8: a field holding
  either is refused where it enters, never sent to the database.
- A credit's ledger key is ``credit_key(account_id, idempotency_key)``: an injective
  encoding, so no two (account, key) pairs ever share a ledger row.
- A usage event's ``(source, id)`` is the ledger's unique key, and a call id keys a
  reservation: each is 1-``MAX_KEY_LENGTH`` characters without U+0000
  (``is_event_key``), so that its index entry fits in a page; and no event source may
  be one of the engine's own credit sources (``CREDIT_SOURCES``).
"""

from __future__ import annotations

import re
from urllib.parse import quote

from rating.core.errors import InvalidRequest

ACCOUNT_ID_MAX_LENGTH = 128
MAX_IDEMPOTENCY_KEY_LENGTH = 255
MAX_REASON_LENGTH = 1000
# The rule as a regular expression that means the same in Python, PostgreSQL and
# JSON Schema (ECMA 262): it is written into the CHECK and the OpenAPI document as is.
ACCOUNT_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
ACCOUNT_ID_RULE = "1-128 characters of A-Z a-z 0-9 . _ : -"
_ACCOUNT_ID = re.compile(ACCOUNT_ID_PATTERN, re.ASCII)
# Characters an account id keeps as they are in a credit key: exactly its own charset.
_KEPT_IN_KEYS = "._:-"
MAX_KEY_LENGTH = 256
# The sources of the engine's own ledger rows: card top-ups, automatic recharges and
# operators' adjustments are keyed (source, idempotency key) in the ledger's key space.
# A usage event claiming one of them could take the key of a credit still to come, and
# a card already charged could then not be credited: such an event is refused.
CREDIT_SOURCES = frozenset({"topup", "recharge", "adjustment"})


def is_account_id(text: object) -> bool:
    """Whether ``text`` is a string within the account-id rule."""
    return isinstance(text, str) and _ACCOUNT_ID.fullmatch(text) is not None


def is_event_key(text: str) -> bool:
    """Whether ``text`` can be part of an event's or a call's key (see the docstring)."""
    return 0 < len(text) <= MAX_KEY_LENGTH and "\x00" not in text


def check_account_id(text: str, *, what: str = "account id") -> str:
    """``text`` if it is a valid account id, else ``InvalidRequest`` (``invalid_account``)."""
    if not is_account_id(text):
        raise InvalidRequest(f"{what} {text!r}: expected {ACCOUNT_ID_RULE}",
                             code="invalid_account")
    return text


def unstorable(text: str) -> str | None:
    """Why PostgreSQL cannot store ``text`` (U+0000, a lone surrogate), or None."""
    if "\x00" in text:
        return "must not contain U+0000"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must not contain a lone surrogate (U+D800-U+DFFF); send UTF-8"
    return None


def check_text(name: str, text: str, *, max_length: int) -> str:
    """``text`` if it can be stored and is 1..``max_length`` characters long, else
    ``InvalidRequest`` (``invalid_text``) naming the field."""
    problem = unstorable(text)
    if problem is None and not 1 <= len(text) <= max_length:
        problem = f"must be 1-{max_length} characters"
    if problem is not None:
        raise InvalidRequest(f"{name}: {problem}", code="invalid_text")
    return text


def credit_key(account_id: str, idempotency_key: str) -> str:
    """The ledger key of a credit: the account id percent-encoded, ``/``, the caller's key.

    The encoded account id never holds a ``/``, so the first ``/`` splits the key back
    into its two parts, and percent-encoding is reversible: distinct pairs give distinct
    keys whatever either holds (``a`` + ``b/c`` and ``a/b`` + ``c`` no longer meet).
    Every id within the account-id rule encodes to itself, so the rows written before
    this encoding, ``f"{account_id}/{key}"``, keep their keys.
    """
    encoded = quote(account_id, safe=_KEPT_IN_KEYS, errors="surrogatepass")
    return f"{encoded}/{idempotency_key}"
