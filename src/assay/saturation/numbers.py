"""Exact rationals and p-bit floating point, written on Python's ``Fraction`` and ``int``.

A *p-bit float* here is a number ``m * 2**e`` with an integer significand ``|m| < 2**p`` and an
unbounded integer exponent ``e`` (no overflow, no underflow, no subnormals, no infinities): the
idealised floating point of the saturation papers. :func:`round_to_bits` rounds a rational to the
nearest such number, ties to even, which for ``p = 24`` / ``p = 53`` is exactly IEEE single / double
rounding for numbers in the normal range. :func:`sqrt_to_bits` is the correctly rounded square root.
Both are computed with integer arithmetic only (no floats, no mpmath).
"""

from __future__ import annotations

from fractions import Fraction
from math import isqrt


def _scaled(a: int, b: int, e: int) -> tuple[int, int]:
    """Return (numerator, denominator) of ``a / (b * 2**e)`` without fractions."""
    return (a, b << e) if e >= 0 else (a << -e, b)


def _from_significand(m: int, e: int) -> Fraction:
    return Fraction(m << e) if e >= 0 else Fraction(m, 1 << -e)


def round_to_bits(x: Fraction | int, p: int) -> Fraction:
    """Return ``x`` rounded to the nearest rational with ``p`` significant bits (ties to even).

    The exponent is unbounded, so the result differs from ``x`` by at most ``|x| * 2**-p``.
    """
    if p < 1:
        raise ValueError(f"precision must be >= 1 bit, got {p}")
    x = Fraction(x)
    if x == 0:
        return x
    a, b = abs(x.numerator), x.denominator
    # With e = len(a) - len(b) - p, a / (b 2^e) lies in (2^(p-1), 2^(p+1)): at most one step to fix.
    e = a.bit_length() - b.bit_length() - p
    num, den = _scaled(a, b, e)
    m, rem = divmod(num, den)
    if m >= 1 << p:
        e += 1
        num, den = _scaled(a, b, e)
        m, rem = divmod(num, den)
    twice = 2 * rem
    if twice > den or (twice == den and m & 1):
        m += 1
    r = _from_significand(m, e)
    return r if x > 0 else -r


def sqrt_to_bits(x: Fraction | int, p: int) -> Fraction:
    """Return the square root of ``x >= 0`` correctly rounded to ``p`` significant bits (ties to even)."""
    if p < 1:
        raise ValueError(f"precision must be >= 1 bit, got {p}")
    x = Fraction(x)
    if x < 0:
        raise ValueError("square root of a negative number")
    if x == 0:
        return x
    a, b = x.numerator, x.denominator
    # Find e with r = floor(sqrt(x) / 2^e) in [2^p, 2^(p+1)): p bits plus one rounding bit.
    e = (a.bit_length() - b.bit_length()) // 2 - p - 1
    while True:
        num, den = _scaled(a, b, 2 * e)  # x / 4^e
        r = isqrt(num // den)  # floor(sqrt(floor(y))) == floor(sqrt(y)) for y >= 0
        if r >= 1 << (p + 1):
            e += 1
        elif r < 1 << p:
            e -= 1
        else:
            break
    inexact = r * r * den != num
    m, guard = r >> 1, r & 1
    if guard and (inexact or m & 1):
        m += 1
    return _from_significand(m, e + 1)


def bit_length_of(q: Fraction) -> tuple[int, int]:
    """Return (numerator bits, denominator bits) of ``q`` in lowest terms; 0 has (0, 1)."""
    return abs(q.numerator).bit_length(), q.denominator.bit_length()


def bits_of(q: Fraction) -> int:
    """Return the size of ``q`` in bits: bits of |numerator| plus bits of the denominator (lowest terms)."""
    return abs(q.numerator).bit_length() + q.denominator.bit_length()


def significant_bits(q: Fraction) -> int | None:
    """Return the fewest significant bits p with ``round_to_bits(q, p) == q``, or None if q is not dyadic."""
    if q == 0:
        return 0
    d = q.denominator
    if d & (d - 1):
        return None
    n = abs(q.numerator)
    return (n >> ((n & -n).bit_length() - 1)).bit_length()
