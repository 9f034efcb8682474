"""The DLQ's overflow store: refused usage records the broker would not take, kept whole.

The usage consumer publishes every refused record to the dead-letter topic, reduced
if it has to be (see consumers/dead_letters.py). A record the broker refuses even
then is kept here instead, so that its partition moves on and nothing is lost:

    SELECT source_topic, source_partition, source_offset, error_code, error,
           publish_error, length(value) FROM dead_letters ORDER BY id;
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rating.stores.db import Connection


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None
    value: bytes | None
    error_code: str
    error: str
    publish_error: str


def _text(value: str) -> str:
    # PostgreSQL text cannot hold U+0000, and a reason may quote the bytes that had one.
    return value.replace("\x00", "\\x00")


async def keep_dead_letters(conn: Connection, letters: Sequence[StoredDeadLetter]) -> None:
    """Store ``letters``; one already stored (a redelivered record) is left as it is."""
    if not letters:
        return
    await conn.executemany(
        """
        INSERT INTO dead_letters (source_topic, source_partition, source_offset, key, value,
                                  error_code, error, publish_error)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING
        """,
        [(_text(d.source_topic), d.source_partition, d.source_offset, d.key, d.value,
          _text(d.error_code), _text(d.error), _text(d.publish_error)) for d in letters])


async def kept_whole(conn: Connection, source_topic: str, source_partition: int,
                     source_offset: int) -> tuple[bytes | None, bytes | None] | None:
    """The original key and value of a refused record kept here, or None."""
    row = await conn.fetchrow(
        "SELECT key, value FROM dead_letters WHERE source_topic = $1"
        " AND source_partition = $2 AND source_offset = $3",
        _text(source_topic), source_partition, source_offset)
    return None if row is None else (row["key"], row["value"])
