"""Exercise checkers: each notebook's exercises call `check_<notebook>_<n>(answer)` and get immediate feedback.

Solutions live in `lossreduce_demo/exercises/solutions.md`, apart from the notebooks.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation

MIN_FIGURES = 2  # an answer with 2 significant figures (0.78, 0.020, 3.1) is right when the value rounds to it
NEAR = 0.05  # within 5 % (or right at the answer's own, coarser precision): "close"


def feedback(ok: bool, right: str, wrong: str) -> bool:
    print(("✅ " + right) if ok else ("❌ " + wrong))
    return ok


def _decimal(answer) -> Decimal | None:
    """The answer as the learner wrote it: 0.78 → Decimal('0.78') (a float through its shortest repr, so the digits
    typed are the digits seen; numpy scalars too), None for anything that is not a finite number."""
    if isinstance(answer, bool) or answer is None:
        return None
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value):
        return None
    try:
        if isinstance(answer, str) and any(c in answer for c in ".eE"):
            return Decimal(answer.strip())
        if value.is_integer():  # 120 or 120.0: trailing zeros of a whole number are not significant
            return Decimal(int(value)).normalize()
        return Decimal(repr(value))
    except InvalidOperation:
        return None


def significant_figures(answer) -> int:
    """Significant figures of the answer as written: 0.78 → 2, 0.02 → 1, "0.020" → 2, 3.1 → 2, 120 → 2, 182 → 3."""
    number = _decimal(answer)
    return 0 if number is None or number == 0 else len(number.as_tuple().digits)


def within_precision(answer, expected: float) -> bool:
    """`expected` rounded to the answer's significant figures (at least MIN_FIGURES) is the answer:
    0.78 for 0.7843, 0.02 for 0.0204 (= 0.020), 3.1 for 3.14; not 3 for 3.4, not 0.3 for 1/3."""
    number = _decimal(answer)
    if number is None or not math.isfinite(expected) or expected == 0:
        return number is not None and float(number) == expected
    figures = max(MIN_FIGURES, significant_figures(answer))
    unit = 10.0 ** (math.floor(math.log10(abs(expected))) - figures + 1)
    return abs(float(number) - expected) <= unit / 2 * (1 + 1e-9)


def close(answer, expected: float, rel: float = 1e-3, abs_: float = 1e-9) -> bool:
    """The answer is `expected` to `rel` (relative) or at the precision it is written in (within_precision);
    rel=0 asks for the exact value (counts)."""
    number = _decimal(answer)
    if number is None:
        return False
    if math.isclose(float(number), float(expected), rel_tol=rel, abs_tol=abs_):
        return True
    return rel > 0 and within_precision(answer, expected)


def near(answer, expected: float) -> bool:
    """Not right, but close: within NEAR of the value, or right at the answer's own (too coarse) precision
    (3 for 3.4, 0.3 for 1/3)."""
    number = _decimal(answer)
    if number is None or number == 0 or expected == 0 or (float(number) > 0) != (expected > 0):
        return False
    error = abs(float(number) - expected)
    return error <= NEAR * abs(expected) or error < 10.0 ** number.as_tuple().exponent / 2 * (1 - 1e-9)


def check_number(answer, expected: float, right: str, wrong: str, *, rel: float = 1e-3) -> bool:
    """Print ✅ `right` when the answer is `expected` (close), "close — give more digits" when it is near, else
    ❌ `wrong` (the hint); return whether it was right. rel=0: exact answers only (counts), never "close"."""
    if close(answer, expected, rel):
        return feedback(True, right, "")
    if _decimal(answer) is None:
        return feedback(False, "", f"{answer!r} is not a number. {wrong}")
    if rel > 0 and near(answer, expected):
        if significant_figures(answer) < MIN_FIGURES:  # 3 for 3.4: right only at its own, coarser precision
            print(f"🟡 Close — give more digits: {answer} is near the value; write at least {MIN_FIGURES} "
                  "significant figures.")
        else:  # 0.79 for 0.784: the figures are there, the last one is off
            print(f"🟡 Close — check your rounding: {answer} is within {NEAR:.0%} of the value but not it at the "
                  "precision you wrote.")
        return False
    return feedback(False, right, wrong)


def pending(answer, hint: str) -> bool:
    """True (after printing the hint) while the learner has left `answer = None`."""
    if answer is None:
        print(f"✍️  Not answered yet: set `answer = ...` and run the cell again. Hint: {hint}")
        return True
    return False
