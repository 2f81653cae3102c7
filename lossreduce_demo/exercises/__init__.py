"""Exercise checkers: each notebook's exercises call `check_<notebook>_<n>(answer)` and get immediate feedback.

Solutions live in `lossreduce_demo/exercises/solutions.md`, apart from the notebooks.
"""

from __future__ import annotations

import math


def feedback(ok: bool, right: str, wrong: str) -> bool:
    print(("✅ " + right) if ok else ("❌ " + wrong))
    return ok


def close(answer, expected: float, rel: float = 1e-3, abs_: float = 1e-9) -> bool:
    try:
        return math.isclose(float(answer), float(expected), rel_tol=rel, abs_tol=abs_)
    except (TypeError, ValueError):
        return False


def pending(answer, hint: str) -> bool:
    """True (after printing the hint) while the learner has left `answer = None`."""
    if answer is None:
        print(f"✍️  Not answered yet: set `answer = ...` and run the cell again. Hint: {hint}")
        return True
    return False
