"""The country of a number: phonenumbers' answer, for countries that share a calling code too."""

from __future__ import annotations

import phonenumbers
import pytest

from rating.core.countries import country_of

SHARED = sorted(code for code, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items()
                if len(regions) > 1 and regions[0] != "001")


@pytest.mark.parametrize("code", SHARED)
def test_every_regions_example_numbers_are_placed_as_phonenumbers_places_them(
        code: int) -> None:
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[code]:
        for kind in phonenumbers.PhoneNumberType.values():
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
            expected = phonenumbers.region_code_for_number(phonenumbers.parse(e164, None))
            if expected is not None and expected != "001":
                assert country_of(e164) == expected, e164


def test_shared_codes_and_their_fallback() -> None:
    assert country_of("+447700900123") == "GB"
    assert country_of("+447700312345") == "JE"
    assert country_of("+14165550123") == "CA"
    assert country_of("+12125551234") == "US"
    assert country_of("+77012345678") == "KZ"
    assert country_of("+390612345678") == "IT"  # a leading zero kept, as parse keeps it
    assert country_of("+44999") == "GB"  # in no range: the code's main country
    assert country_of("+80012345678") is None  # non-geographic
