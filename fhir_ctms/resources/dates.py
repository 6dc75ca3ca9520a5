"""FHIR date, dateTime and instant values as half-open UTC ranges [start, end) in microseconds.

A partial value is a range (``2026`` is the whole year), as FHIR search defines
(R5 search.html#date); a dateTime without a zone is read as UTC.
"""

from __future__ import annotations

import re
from calendar import monthrange
from datetime import datetime, timedelta, timezone

from ..errors import BadRequest

_DATE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d{1,9})?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _us(dt: datetime) -> int:
    return (dt - _EPOCH) // timedelta(microseconds=1)


def date_range(value: str) -> tuple[int, int]:
    """The [start, end) range of a FHIR date/dateTime/instant, in microseconds since the epoch."""
    m = _DATE.fullmatch(value.strip())
    if not m:
        raise BadRequest(f"{value!r} is not a FHIR date, dateTime or instant")
    try:
        y = int(m["y"])
        tz = timezone.utc
        if m["tz"] and m["tz"] != "Z":
            sign = 1 if m["tz"][0] == "+" else -1
            hh, mm = int(m["tz"][1:3]), int(m["tz"][4:6])
            tz = timezone(sign * timedelta(hours=hh, minutes=mm))
        if m["m"] is None:
            start, end = datetime(y, 1, 1, tzinfo=tz), datetime(y + 1, 1, 1, tzinfo=tz)
        elif m["d"] is None:
            mo = int(m["m"])
            start = datetime(y, mo, 1, tzinfo=tz)
            end = start + timedelta(days=monthrange(y, mo)[1])
        elif m["H"] is None:
            start = datetime(y, int(m["m"]), int(m["d"]), tzinfo=tz)
            end = start + timedelta(days=1)
        else:
            base = datetime(y, int(m["m"]), int(m["d"]), int(m["H"]), int(m["M"]), tzinfo=tz)
            if m["S"] is None:
                start, end = base, base + timedelta(minutes=1)
            else:
                start = base.replace(second=int(m["S"]))
                frac = m["f"] or ""
                if frac:
                    digits = frac[1:]
                    start = start.replace(microsecond=int((digits + "000000")[:6]))
                    end = start + timedelta(microseconds=max(1, 10 ** (6 - min(len(digits), 6))))
                else:
                    end = start + timedelta(seconds=1)
    except (ValueError, OverflowError) as exc:
        raise BadRequest(f"{value!r} is not a valid date: {exc}") from exc
    return _us(start), _us(end)


def parse_http_date(value: str) -> int | None:
    """An HTTP-date (If-Modified-Since) in microseconds, or None when unparseable (then ignored)."""
    from email.utils import parsedate_to_datetime
    try:
        dt = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return _us(dt)
