"""SMS segment counting: GSM-7 (160/153 septets) or UCS-2 (70/67 UTF-16 units).

A multipart message never splits a GSM-7 extension character (escape + char)
or a UTF-16 surrogate pair across two segments, as handsets cannot reassemble
half a character; that is why packing is greedy rather than a plain division.
"""

from __future__ import annotations

from collections.abc import Iterable

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Sent as ESC + char, so each costs two septets.
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

GSM7_SINGLE, GSM7_MULTI = 160, 153
UCS2_SINGLE, UCS2_MULTI = 70, 67


def _pack(widths: Iterable[int], single: int, multi: int) -> int:
    """Number of segments for characters of the given widths (never split)."""
    units = list(widths)
    if sum(units) <= single:
        return 1
    segments, used = 1, 0
    for width in units:
        if used + width > multi:
            segments += 1
            used = 0
        used += width
    return segments


def _gsm7_widths(text: str) -> list[int] | None:
    widths: list[int] = []
    for char in text:
        if char in GSM7_BASIC:
            widths.append(1)
        elif char in GSM7_EXTENSION:
            widths.append(2)
        else:
            return None
    return widths


def count_segments(text: str) -> int:
    """Segments needed to send ``text``; an empty text still costs one segment."""
    gsm = _gsm7_widths(text)
    if gsm is not None:
        return _pack(gsm, GSM7_SINGLE, GSM7_MULTI)
    ucs2 = (2 if ord(char) > 0xFFFF else 1 for char in text)
    return _pack(ucs2, UCS2_SINGLE, UCS2_MULTI)
