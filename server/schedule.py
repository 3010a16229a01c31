"""Season reset schedules: when a leaderboard's season ends, in UTC.

A board's `reset` setting is `""` (never), `"daily"` (00:00 UTC),
`"weekly"` (Monday 00:00 UTC), `"monthly"` (the 1st, 00:00 UTC) or a
5-field cron expression (minute hour day-of-month month day-of-week),
always evaluated in UTC. Cron parsing and matching is the `cronsim`
library's job; this module only validates a spec, names what is wrong
with it, and turns Unix seconds into matches and back.

Pure: no clock reads and no I/O. Every instant is an integer Unix second
passed in by the caller, so the same inputs always give the same answer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from cronsim import CronSim, CronSimError

__all__ = ["NAMED", "Schedule", "ScheduleError", "ends_between", "parse_reset"]

NAMED: Mapping[str, str] = MappingProxyType(
    {
        "daily": "0 0 * * *",
        "weekly": "0 0 * * 1",
        "monthly": "0 0 1 * *",
    }
)
"""The named schedules and the cron expressions they stand for."""

# Field names and what each accepts, in cron order, for error messages.
_FIELDS: tuple[tuple[str, str], ...] = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31, L or LW"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 or SUN-SAT (0 and 7 are Sunday), with L or #1-#5"),
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
# cronsim stops looking for a match 50 years after where it starts; a longer
# horizon could not tell "fires in 60 years" from "never fires".
_MAX_HORIZON_YEARS = 50


class ScheduleError(ValueError):
    """A reset spec is not a schedule; the message says which part is wrong."""


@dataclass(frozen=True)
class Schedule:
    """A validated reset schedule; build one with `parse_reset`.

    `spec` is the setting exactly as the operator wrote it; `expression` is
    the equivalent 5-field cron expression (single-spaced, upper case) that
    cronsim evaluates in UTC.
    """

    spec: str
    expression: str

    def next_after(self, t: int) -> int:
        """Return the first scheduled instant strictly after Unix second `t`.

        At an exact boundary the boundary itself does not count: for a
        daily schedule, `next_after(midnight)` is the following midnight.
        `t` must lie within `datetime`'s range (years 1-9999), or
        OverflowError is raised.
        """
        end = next(_matches(self.expression, t), None)
        if end is None:
            # cronsim gives up after 50 years without a match. Not expected for
            # a Schedule from parse_reset: the rarest patterns that fire at all
            # (February 29th on a given weekday) recur within 40 years.
            raise ScheduleError(f"reset schedule {self.spec!r} does not fire within 50 years after {t}")
        return end


def parse_reset(spec: str, *, horizon_years: int = 5) -> Schedule | None:
    """Parse a board's `reset` setting; None means the board never resets.

    Surrounding whitespace is ignored and the names `daily`, `weekly` and
    `monthly` are case-insensitive. Anything else must be a 5-field cron
    expression as cronsim reads it: numbers, `*`, ranges `a-b`, steps `/n`,
    lists `a,b`, month and weekday names, and cronsim's `L`, `LW` and `#n`.
    When both day fields are restricted a day matching either one fires
    (classic cron). Six-field (seconds) forms and `@` macros are refused.

    An expression must fire within `horizon_years` (1-50, default 5) after
    the Unix epoch; this catches expressions that never fire, such as
    `0 0 30 2 *`, and ones so rare they are surely a mistake, such as
    `0 0 * 2 MON#5` (a fifth Monday in February, first in 1988).

    Raises ScheduleError naming the offending field or problem.
    """
    if not 1 <= horizon_years <= _MAX_HORIZON_YEARS:
        raise ValueError(f"horizon_years must be 1-{_MAX_HORIZON_YEARS}, got {horizon_years}")
    text = spec.strip()
    if not text:
        return None
    named = NAMED.get(text.lower())
    if named is not None:
        return Schedule(spec=spec, expression=named)
    expression = _check_expression(spec, text)
    horizon = _EPOCH.replace(year=_EPOCH.year + horizon_years)
    # From one second before the epoch, so a match at the epoch itself counts.
    first = next(_matches(expression, -1), None)
    if first is None or first > _unix(horizon):
        raise ScheduleError(
            f"reset schedule {spec!r} never fires (no match within {horizon_years} years after 1970-01-01)"
        )
    return Schedule(spec=spec, expression=expression)


def ends_between(schedule: Schedule, start: int, now: int, *, limit: int = 10_000) -> list[int]:
    """Return the scheduled ends `e` with `start < e <= now`, oldest first, at most `limit`.

    At the bound the list holds the *oldest* `limit` ends and stops there.
    A caller catching up after downtime ends those seasons, then calls
    again with `start` set to the last end returned, until it gets fewer
    than `limit`: every missed season is ended exactly once, in order, and
    no single call does unbounded work (a per-minute schedule missed for a
    year is half a million ends). Returning the newest ends instead would
    silently skip seasons. An empty list means nothing ended (also when
    `now <= start`).
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    ends: list[int] = []
    if now <= start:
        return ends
    for end in _matches(schedule.expression, start):
        if end > now:
            break
        ends.append(end)
        if len(ends) == limit:
            break
    return ends


def _matches(expression: str, t: int) -> Iterator[int]:
    """Iterate the Unix seconds at which `expression` fires, strictly after `t`.

    Ends (rather than raising) when cronsim finds no match within 50 years.
    """
    try:
        # cronsim steps one second before matching, so `t` itself never matches.
        sim = CronSim(expression, _EPOCH + t * _SECOND)
    except CronSimError as exc:
        raise ScheduleError(f"invalid cron expression {expression!r}: {exc}") from exc
    return (_unix(dt) for dt in sim)


def _unix(dt: datetime) -> int:
    """Return the Unix second of an aware datetime, exactly (no float)."""
    return (dt - _EPOCH) // _SECOND


def _check_expression(spec: str, text: str) -> str:
    """Return `text` as a normalized 5-field expression, or raise naming what is wrong."""
    if not text.isascii():
        raise ScheduleError(f"reset schedule {spec!r} contains non-ASCII characters")
    fields = text.split()
    if len(fields) == 1 and text.startswith("@"):
        raise ScheduleError(
            f"reset schedule {spec!r}: @ macros are not supported; use 'daily', 'weekly' or 'monthly'"
        )
    if len(fields) != len(_FIELDS):
        count = f"{len(fields)} field" + ("" if len(fields) == 1 else "s")
        hint = " (a seconds field is not supported)" if len(fields) == len(_FIELDS) + 1 else ""
        raise ScheduleError(
            f"reset schedule {spec!r} has {count}{hint}; expected '', 'daily', 'weekly', "
            "'monthly' or 5 cron fields: minute hour day-of-month month day-of-week"
        )
    # Check each field alone (the others `*`) so the message can name the bad one.
    for i, (name, allowed) in enumerate(_FIELDS):
        probe = ["*"] * len(_FIELDS)
        probe[i] = fields[i]
        try:
            CronSim(" ".join(probe), _EPOCH)
        except (CronSimError, ValueError) as exc:
            raise ScheduleError(
                f"reset schedule {spec!r}: invalid {name} field {fields[i]!r} (values: {allowed})"
            ) from exc
    expression = " ".join(fields).upper()
    try:
        CronSim(expression, _EPOCH)
    except (CronSimError, ValueError) as exc:
        # Every field is valid alone, so the combination is impossible (day 30 in February).
        raise ScheduleError(
            f"reset schedule {spec!r} never fires: "
            f"day-of-month {fields[2]!r} never occurs in month {fields[3]!r}"
        ) from exc
    return expression
