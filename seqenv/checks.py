"""Argument checks shared by the envs and the learners (one message format everywhere).

:func:`check_number` is the one range check of a numeric argument or flag:
``seqenv`` uses it for the env constructors, ``agents`` (through
:mod:`agents.common.cli`, which re-exports it) for every config dataclass.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, cast


def check_number(
    flag: str,
    value: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    integer: bool = False,
) -> None:
    """Raise unless ``value`` is a finite number (an integer if ``integer``) within the bounds.

    A ``bool`` is never a number here; numpy scalars count (``np.int64`` is an integer).

    :param flag: the name as the user types it (``"--grad-clip"``, ``"EARMConfig.lam"``).
    :raises ValueError: ``"--grad-clip must be a finite number > 0, got -1.0"``.
    """
    bounds = [
        f"{op} {b:g}" if isinstance(b, float) else f"{op} {b}"
        for op, b in ((">=", ge), (">", gt), ("<=", le), ("<", lt))
        if b is not None
    ]
    v = cast(float, value)  # compared only once known real (typeshed's numbers.Real declares no comparisons)
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and (isinstance(value, numbers.Integral) or not integer)
        and math.isfinite(v)
        and (ge is None or v >= ge)
        and (gt is None or v > gt)
        and (le is None or v <= le)
        and (lt is None or v < lt)
    )
    if not ok:
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{flag} must be {kind}{' ' if bounds else ''}{' and '.join(bounds)}, got {value!r}")
