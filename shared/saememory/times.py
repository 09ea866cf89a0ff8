"""Time as data: a message's timestamp parsed once, when it is added, into a UTC instant.

A record keeps ``timestamp`` as given (for display) and ``time``, the instant as a fixed-width
ISO 8601 string in UTC (``2024-04-12T09:30:00.000000+00:00``), which sorts as time does, so both
backends filter ``since``/``until`` by plain comparison. Accepted: ISO 8601 with or without a
zone (without one it is taken as UTC), ``datetime`` (naive: UTC), ``date`` (midnight UTC), epoch
seconds (int or float) and LongMemEval's ``2023/05/20 (Sat) 02:21`` (UTC).

``query_window`` reads the time a question names ("last week", "two months ago", "in March",
"yesterday", "last Saturday", "in the past three weeks") as a window of instants, counted back
from a reference time. Calendar arithmetic is python-dateutil's ``relativedelta``; the phrases
are matched here, because a period is needed and not a point: dateparser, tried first, reads
"in March" as March 30th (the reference day's number), "May I ask" as a date, and knows no
"last weekend".
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Any

# Words that only name a time: an alternative made of them is read as a time, not searched alone
# (ranking.alternatives), and a query's word match leaves them to the time adjustment
# (Encoder.word_vectors): "January" must not meet "next month".
TIME_WORDS = frozenset(
    "today yesterday tomorrow tonight morning mornings afternoon afternoons evening evenings night nights noon "
    "midnight weekend weekends week weeks month months year years day days hour hours minute minutes ago now last "
    "next past recent recently lately "
    "later earlier am pm monday tuesday wednesday thursday friday saturday sunday january february march april "
    "may june july august september october november december spring summer autumn fall winter".split())
_LONGMEMEVAL = "%Y/%m/%d (%a) %H:%M"
_ACCEPTED = ("ISO 8601 (e.g. '2024-04-12T09:30:00+02:00' or '2024-04-12'), a datetime or date, epoch seconds, "
             "or '2023/05/20 (Sat) 02:21'")


def instant(value: Any, name: str = "timestamp") -> dt.datetime:
    """``value`` as a timezone-aware UTC ``datetime``.

    Raises:
        ValueError: If ``value`` is none of the accepted forms, naming ``name`` and the forms.
    """
    moment = local_instant(value, name)
    try:
        return moment.astimezone(dt.timezone.utc)
    except OverflowError:
        raise ValueError(f"{name}={value!r} is outside the years 1 to 9999 in UTC.") from None


def local_instant(value: Any, name: str = "timestamp") -> dt.datetime:
    """``value`` as a timezone-aware ``datetime`` in its own zone (UTC when it names none), so
    that "yesterday" can be counted in the asker's days; ``instant`` for the same in UTC.

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
    return moment


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


# Query time expressions -------------------------------------------------------------------------

_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
            "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "a couple of": 2, "couple of": 2,
            "a few": 3, "few": 3, "several": 3}
_NUM = r"(\d{1,3}|a couple of|couple of|a few|few|several|an?|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)"
_UNIT = r"(day|week|month|year)s?"
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")
# The phrase that starts first in the query decides its window; at the same place, the first pattern.
_PATTERNS = (
    ("span", re.compile(rf"\b(?:in|over|during|within|for)\s+the\s+(?:past|last)\s+(?:{_NUM}\s+)?{_UNIT}\b(?!\s+of\b)", re.I)),
    ("span", re.compile(rf"\bthe\s+(?:past|last)\s+{_NUM}\s+{_UNIT}\b(?!\s+of\b)", re.I)),
    ("ago", re.compile(rf"\b{_NUM}\s+{_UNIT}\s+ago\b", re.I)),
    ("day", re.compile(r"\b(yesterday|today|tonight|this morning|last night)\b", re.I)),
    ("weekend", re.compile(r"\b(?:last|past|previous|this past)\s+weekend\b", re.I)),
    ("weekday", re.compile(rf"\b(?:last|past|previous|this past|on)\s+({'|'.join(_WEEKDAYS)})\b", re.I)),
    ("last", re.compile(r"\b(?:last|previous)\s+(week|month|year)\b(?!\s+of\b)", re.I)),  # not "the last year of college"
    ("month", re.compile(rf"\b(in|during|since|last|early|late|mid|of)\s+({'|'.join(_MONTHS)})\b", re.I)),
)


@dataclass(frozen=True)
class TimeWindow:
    """The time a query names, as UTC instants: ``start <= t <= end``.

    Attributes:
        start, end: The window's bounds (timezone-aware, UTC).
        phrase: The words of the query it was read from, e.g. ``"two weeks ago"``.
    """

    start: dt.datetime
    end: dt.datetime
    phrase: str

    def to_dict(self) -> dict[str, str]:
        return {"start": iso(self.start), "end": iso(self.end), "phrase": self.phrase}


def query_window(query: str, now: dt.datetime) -> TimeWindow | None:
    """The time window a query names, counted back from ``now``, or None if it names none.

    A point in the past ("two weeks ago", "last week") becomes that point give or take half its
    unit, since people round ("two weeks ago" is 10.5 to 17.5 days back); a named day, weekend
    or month becomes that whole day, weekend or month (the latest one before ``now``); "the past
    three weeks" and "since March" run up to ``now``. Days, weekends and months are those of
    ``now``'s time zone. A question that asks for a duration ("how many days ago ...") names no
    window, and neither does one before year 1 or after 9999. Only the phrase that comes first
    in the query counts.

    Args:
        query: The question.
        now: The reference time, timezone-aware, in the asker's zone (``local_instant``).
    """
    try:
        window = _window(query, now)
        if window is not None:
            iso(window.start), iso(window.end)  # in UTC too, as records are compared
        return window
    except (OverflowError, ValueError):  # the time named lies before year 1 or after 9999: no window to rank
        return None


def _window(query: str, now: dt.datetime) -> TimeWindow | None:
    from dateutil.relativedelta import relativedelta

    found = [(match.start(), order, kind, match) for order, (kind, pattern) in enumerate(_PATTERNS)
             if (match := pattern.search(query)) is not None]
    for _, _, kind, match in sorted(found, key=lambda f: f[:2])[:1]:
        phrase = match.group(0).strip()
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        if kind == "span":
            count, unit = _count(match.group(1)), match.group(2).lower()
            return TimeWindow(now - relativedelta(**{unit + "s": count}), now, phrase)
        if kind == "ago":
            count, unit = _count(match.group(1)), match.group(2).lower()
            anchor = now - relativedelta(**{unit + "s": count})
            return _around(anchor, unit, phrase)
        if kind == "day":
            word = match.group(1).lower()
            start = day - dt.timedelta(days=1) if word in ("yesterday", "last night") else day
            return TimeWindow(start, start + dt.timedelta(days=1), phrase)
        if kind == "weekend":
            back = (day.weekday() - 5) % 7
            back += 7 if back < 2 else 0  # on a Saturday or Sunday, the weekend before this one
            start = day - dt.timedelta(days=back)
            return TimeWindow(start, start + dt.timedelta(days=2), phrase)
        if kind == "weekday":
            back = (day.weekday() - _WEEKDAYS.index(match.group(1).lower())) % 7 or 7
            start = day - dt.timedelta(days=back)
            return TimeWindow(start, start + dt.timedelta(days=1), phrase)
        if kind == "last":  # the calendar week (from Monday), month or year before, and a month or so back
            unit = match.group(1).lower()
            this = {"week": day - dt.timedelta(days=day.weekday()), "month": day.replace(day=1),
                    "year": day.replace(month=1, day=1)}[unit]
            around = _around(now - relativedelta(**{unit + "s": 1}), unit, phrase)
            return TimeWindow(min(this - relativedelta(**{unit + "s": 1}), around.start), max(this, around.end), phrase)
        month = _MONTHS.index(match.group(2).lower()) + 1
        if match.group(1).lower() != "last" and month == now.month:
            start = day.replace(day=1)  # "in March", asked in March: this month so far
        else:
            start = day.replace(day=1, month=month) - relativedelta(years=1 if month >= now.month else 0)
        if match.group(1).lower() == "since":
            return TimeWindow(start, now, phrase)
        return TimeWindow(start, min(start + relativedelta(months=1), now), phrase)
    return None


def _count(word: str | None) -> int:
    if word is None:
        return 1
    word = " ".join(word.lower().split())
    return int(word) if word.isdigit() else _NUMBERS[word]


def _around(anchor: dt.datetime, unit: str, phrase: str) -> TimeWindow:
    """``anchor`` give or take half a ``unit`` (at least a day): how loosely people count back."""
    half = {"day": dt.timedelta(days=1), "week": dt.timedelta(days=3.5), "month": dt.timedelta(days=15),
            "year": dt.timedelta(days=182)}[unit]
    return TimeWindow(anchor - half, anchor + half, phrase)
