"""How numbers are printed (``cat.display``): small values keep their digits, undefined ones read n/a."""

from cat.display import duration, number, percent


def test_numbers_keep_their_significant_digits_and_undefined_ones_read_n_a():
    assert [number(x) for x in (0.00026, 0.0, 0.375, 12.5, -0.004, 2.5e6)] == [
        "2.6e-04", "0", "0.375", "12.500", "-4.0e-03", "2.50e+06"]
    assert number(0.0312, signed=True) == "+0.031" and number(float("nan")) == number(None) == "n/a"
    assert [percent(x) for x in (0.333, 0.0, 0.0001, float("nan"))] == ["33.3%", "0%", "<0.1%", "n/a"]
    assert [duration(s) for s in (0.42, 42.4, 185, 7620, float("nan"))] == ["0.4s", "42s", "3m05s", "2h07m", "n/a"]
