"""SMS segment counting: GSM-7 160/153 septets, UCS-2 70/67 UTF-16 units."""

from __future__ import annotations

import pytest

from rating.core.segments import count_segments

CYR = "ж"  # outside GSM-7: forces UCS-2
EMOJI = "😀"  # a surrogate pair: two UTF-16 units


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("", 1),
        ("hello", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("é" * 160, 1),  # é is in the GSM-7 basic set
        ("€" * 80, 1),  # 160 septets
        ("€" * 81, 2),
        ("€" * 153, 3),  # 306 septets, but only 76 two-septet chars fit in 153
        ("a" * 159 + "€", 2),  # 161 septets
        ("a" * 152 + "€" + "a" * 152, 3),  # the € may not straddle a boundary
        ("a" * 153 + "a" * 153, 2),
        ("{}[]~|^\\", 1),
        ("\f", 1),
        (CYR * 70, 1),
        (CYR * 71, 2),
        (CYR * 134, 2),
        (CYR * 135, 3),
        ("a" * 69 + CYR, 1),  # one non-GSM char makes the whole text UCS-2
        ("a" * 70 + CYR, 2),
        (EMOJI * 35, 1),
        (EMOJI * 36, 2),
        (CYR * 66 + EMOJI + CYR * 66, 3),  # the pair may not be split
        ("`", 1),  # backtick is not GSM-7
        ("\x1b" * 71, 2),  # a bare escape is not a character: UCS-2
    ],
)
def test_count_segments(text: str, segments: int) -> None:
    assert count_segments(text) == segments
