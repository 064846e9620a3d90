from fractions import Fraction

import pytest

from hcs import quantity
from hcs.errors import QuantityError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", Fraction(0)),
        ("312", Fraction(312)),
        ("19.5", Fraction(39, 2)),
        ("500m", Fraction(1, 2)),
        ("1500m", Fraction(3, 2)),
        ("100n", Fraction(1, 10**7)),
        ("3u", Fraction(3, 10**6)),
        ("2k", Fraction(2000)),
        ("1M", Fraction(10**6)),
        ("1G", Fraction(10**9)),
        ("1T", Fraction(10**12)),
        ("1P", Fraction(10**15)),
        ("1E", Fraction(10**18)),
        ("1Ki", Fraction(1024)),
        ("1Mi", Fraction(2**20)),
        ("80Gi", Fraction(80 * 2**30)),
        ("1.5Gi", Fraction(3 * 2**29)),
        ("2Ti", Fraction(2 * 2**40)),
        ("1Pi", Fraction(2**50)),
        ("1Ei", Fraction(2**60)),
        ("1e3", Fraction(1000)),
        ("1E3", Fraction(1000)),
        ("2.5e-3", Fraction(1, 400)),
        ("+4", Fraction(4)),
        ("-4", Fraction(-4)),
        (".5", Fraction(1, 2)),
        ("5.", Fraction(5)),
    ],
)
def test_quantities_parse_exactly(text: str, expected: Fraction) -> None:
    assert quantity.parse_quantity(text) == expected


def test_yaml_numbers_are_quantities_too() -> None:
    assert quantity.parse_quantity(2) == 2
    assert quantity.parse_quantity(19.5) == Fraction(39, 2)
    assert quantity.parse_quantity(0.1) == Fraction(1, 10)  # no float round trip


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("80 GB", "contains a space"),
        ("80GB", "without B"),
        ("16K", "lowercase k"),
        ("", "empty"),
        ("Gi", "unrecognised"),
        ("1.2.3", "unrecognised"),
        ("--1", "unrecognised"),
        ("1e", "unrecognised"),
        ("0x10", "unrecognised"),
        (" 16Gi", "surrounding spaces"),
        ("1e999", "exponent"),
        (True, "not a quantity"),
        (None, "not a quantity"),
        ([1], "not a quantity"),
        (float("nan"), "not a finite number"),
    ],
)
def test_bad_quantities_name_the_value_and_why(value: object, why: str) -> None:
    with pytest.raises(QuantityError) as info:
        quantity.parse_quantity(value, "spec.devices[3].vram")
    message = str(info.value)
    assert message.startswith("InvalidQuantity: spec.devices[3].vram: ")
    assert why in message
    if isinstance(value, str) and value:
        assert f'"{value}"' in message


@pytest.mark.parametrize(
    ("text", "up", "down"),
    [
        ("80Gi", 81920, 81920),
        ("16Gi", 16384, 16384),
        ("1", 1, 0),  # one byte: a request needs a whole MiB, a capacity has none
        ("1.5Mi", 2, 1),
        ("80G", 76294, 76293),  # 80e9 bytes = 76293.945... MiB
        ("512Ki", 1, 0),
    ],
)
def test_vram_in_mib_rounds_requests_up_and_capacities_down(text: str, up: int, down: int) -> None:
    assert quantity.vram_mib(text) == up
    assert quantity.vram_mib(text, round_up=False) == down


@pytest.mark.parametrize(
    ("text", "milli"),
    [("312", 312_000), ("19.5", 19_500), ("500m", 500), ("1e3", 1_000_000), ("8.1", 8_100)],
)
def test_tflops_in_milli_tflops(text: str, milli: int) -> None:
    assert quantity.milli_tflops(text) == milli


def test_sub_milli_tflops_round_up_for_requests() -> None:
    assert quantity.milli_tflops("1u") == 1
    assert quantity.milli_tflops("1u", round_up=False) == 0


def test_negative_amounts_are_refused() -> None:
    with pytest.raises(QuantityError, match="must not be negative"):
        quantity.vram_mib("-1Gi", "x")
    with pytest.raises(QuantityError, match="must not be negative"):
        quantity.milli_tflops("-3", "x")


def test_counts_must_be_whole() -> None:
    assert quantity.whole_count("2") == 2
    assert quantity.whole_count(2) == 2
    assert quantity.whole_count("2000m") == 2
    with pytest.raises(QuantityError, match="whole number"):
        quantity.whole_count("1.5", "ai.compute/devices")
    with pytest.raises(QuantityError, match="whole number"):
        quantity.whole_count("500m", "ai.compute/devices")


def test_values_beyond_int64_are_refused() -> None:
    with pytest.raises(QuantityError, match="too large"):
        quantity.vram_mib("1e30")


@pytest.mark.parametrize(("mib", "text"), [(81920, "80Gi"), (1536, "1536Mi"), (2**20, "1Ti")])
def test_format_mib_round_trips(mib: int, text: str) -> None:
    assert quantity.format_mib(mib) == text
    assert quantity.vram_mib(text) == mib


@pytest.mark.parametrize(("milli", "text"), [(19500, "19.5"), (500, "500m"), (312000, "312")])
def test_format_milli_round_trips(milli: int, text: str) -> None:
    assert quantity.format_milli(milli) == text
    assert quantity.milli_tflops(text) == milli
