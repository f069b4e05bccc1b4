"""Values in the gateway's replies written the way the stock (Go) gateway writes them.

`time_remaining` of `path_busy` is Go's `time.Duration.String()` (frontend/leases.go,
`busyError.Remaining().String()`), which the 2.11 publisher reads as a JSON string and prints
("Path busy. Time remaining = 1h59m58.5s", cvmfs/publish/repository_session.cc); a lease's
`expires` is Go's `time.Time.String()` (backend/lease_service.go, `Expiration.String()`).
"""

from __future__ import annotations

import datetime as dt

NS_PER_S = 1_000_000_000


def _fraction(value: int, unit: int) -> str:
    """`value / unit` with the fraction's trailing zeros dropped, as Go prints durations."""
    whole, rest = divmod(value, unit)
    if not rest:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{rest:0{digits}d}".rstrip("0")


def go_duration(seconds: float) -> str:
    """`seconds` as Go's Duration.String(): '2h0m0s', '1m30.25s', '1.5ms', '0s'."""
    ns = round(seconds * NS_PER_S)
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns == 0:
        return "0s"
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_fraction(ns, 1_000)}µs"
    if ns < NS_PER_S:
        return f"{sign}{_fraction(ns, 1_000_000)}ms"
    whole_s, rest_ns = divmod(ns, NS_PER_S)
    text = _fraction(whole_s % 60 * NS_PER_S + rest_ns, NS_PER_S) + "s"
    minutes = whole_s // 60
    if minutes:
        text = f"{minutes % 60}m{text}"
        if minutes >= 60:
            text = f"{minutes // 60}h{text}"
    return sign + text


def go_time_utc(epoch_s: float) -> str:
    """A lease expiry as Go's Time.String() of time.UnixMilli in UTC:
    '2026-12-06 02:55:00.123 +0000 UTC' (the fraction only when not zero)."""
    ms = round(epoch_s * 1000)
    whole = dt.datetime.fromtimestamp(ms // 1000, dt.UTC)
    text = whole.strftime("%Y-%m-%d %H:%M:%S")
    if ms % 1000:
        text += f".{ms % 1000:03d}".rstrip("0")
    return text + " +0000 UTC"
