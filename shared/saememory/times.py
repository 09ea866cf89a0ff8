"""Time as data: a message's timestamp parsed once, when it is added, into a UTC instant.

A record keeps ``timestamp`` as given (for display) and ``time``, the instant as a fixed-width
ISO 8601 string in UTC (``2024-04-12T09:30:00.000000+00:00``), which sorts as time does, so both
backends filter ``since``/``until`` by plain comparison. Accepted: ISO 8601 with or without a
zone (without one it is taken as UTC), ``datetime`` (naive: UTC), ``date`` (midnight UTC), epoch
seconds (int or float) and LongMemEval's ``2023/05/20 (Sat) 02:21`` (UTC).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

_LONGMEMEVAL = "%Y/%m/%d (%a) %H:%M"
_ACCEPTED = ("ISO 8601 (e.g. '2024-04-12T09:30:00+02:00' or '2024-04-12'), a datetime or date, epoch seconds, "
             "or '2023/05/20 (Sat) 02:21'")


def instant(value: Any, name: str = "timestamp") -> dt.datetime:
    """``value`` as a timezone-aware UTC ``datetime``.

    Raises:
        ValueError: If ``value`` is none of the accepted forms, naming ``name`` and the forms.
    """
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"{name}={value!r} is not a finite number of epoch seconds.")
        try:
            moment = dt.datetime.fromtimestamp(value, dt.timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"{name}={value!r} is out of range for epoch seconds.") from None
    elif isinstance(value, str):
        moment = _parse_text(value.strip(), name)
    else:
        raise ValueError(f"{name}={value!r} is a {type(value).__name__}; pass {_ACCEPTED}.")
    if moment.tzinfo is None or moment.utcoffset() is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)  # no zone given: UTC, documented
    try:
        return moment.astimezone(dt.timezone.utc)
    except OverflowError:
        raise ValueError(f"{name}={value!r} is outside the years 1 to 9999 in UTC.") from None


def iso(moment: dt.datetime) -> str:
    """The fixed-width UTC form records store: it sorts as time does."""
    moment = moment.astimezone(dt.timezone.utc)
    return f"{moment.year:04d}" + moment.strftime("-%m-%dT%H:%M:%S.%f+00:00")  # %Y is not zero-padded everywhere


def stored_time(value: Any, name: str = "timestamp") -> tuple[str | None, str]:
    """A message's ``(timestamp, time)``: the display form (as given; ISO for a datetime or number)
    and the UTC instant. None means "not given": no display form, and the time of adding."""
    if value is None:
        return None, iso(dt.datetime.now(dt.timezone.utc))
    moment = instant(value, name)
    display = value if isinstance(value, str) else moment.isoformat()
    return display, iso(moment)


def _parse_text(text: str, name: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        pass
    try:
        return dt.datetime.strptime(text, _LONGMEMEVAL)
    except ValueError:
        raise ValueError(f"{name}={text[:60]!r} is not a time saememory reads; pass {_ACCEPTED}.") from None
