"""Season reset schedules: named and cron specs, UTC instants, catch-up bounds."""

from __future__ import annotations

import ast
import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scoreboard.schedule import NAMED, Schedule, ScheduleError, ends_between, parse_reset

DAY = 86_400


def at(text: str) -> int:
    """Return the Unix second of an ISO date-time read as UTC."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def utc(t: int) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def schedule(spec: str) -> Schedule:
    parsed = parse_reset(spec)
    assert parsed is not None
    return parsed


# -- parsing -------------------------------------------------------------


@pytest.mark.parametrize("spec", ["", "   ", "\t\n"])
def test_empty_spec_never_resets(spec: str) -> None:
    assert parse_reset(spec) is None


@pytest.mark.parametrize(
    ("spec", "expression"),
    [
        ("daily", "0 0 * * *"),
        ("weekly", "0 0 * * 1"),
        ("monthly", "0 0 1 * *"),
        ("  Daily ", "0 0 * * *"),
        ("WEEKLY", "0 0 * * 1"),
        ("\tMonthly\n", "0 0 1 * *"),
    ],
)
def test_named_schedules_map_to_cron(spec: str, expression: str) -> None:
    assert parse_reset(spec) == Schedule(spec=spec, expression=expression)


def test_cron_expression_is_normalized_and_spec_kept() -> None:
    parsed = parse_reset("  */15   9-17 * *  mon-fri ")
    assert parsed == Schedule(spec="  */15   9-17 * *  mon-fri ", expression="*/15 9-17 * * MON-FRI")
    assert dict(NAMED) == {"daily": "0 0 * * *", "weekly": "0 0 * * 1", "monthly": "0 0 1 * *"}


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("0 0 * *", "has 4 fields"),
        ("0", "has 1 field;"),
        ("0 0 0 * * *", "has 6 fields (a seconds field is not supported)"),
        ("0 0 * * * 2024", "has 6 fields"),
        ("hourly", "has 1 field"),
        ("banana", "has 1 field"),
        ("@daily", "@ macros are not supported"),
        ("@hourly", "@ macros are not supported"),
        ("60 0 * * *", "invalid minute field '60' (values: 0-59)"),
        ("-1 0 * * *", "invalid minute field '-1'"),
        ("0 24 * * *", "invalid hour field '24' (values: 0-23)"),
        ("0 0 0 * *", "invalid day-of-month field '0'"),
        ("0 0 32 * *", "invalid day-of-month field '32'"),
        ("0 0 * 0 *", "invalid month field '0'"),
        ("0 0 * 13 *", "invalid month field '13'"),
        ("0 0 * * 8", "invalid day-of-week field '8'"),
        ("0 0 * * funday", "invalid day-of-week field 'funday'"),
        ("0 0 * * 1#6", "invalid day-of-week field '1#6'"),
        ("a b c d e", "invalid minute field 'a'"),
        ("0 0 5-1 * *", "invalid day-of-month field '5-1'"),
        ("*/0 * * * *", "invalid minute field '*/0'"),
        ("1-2-3 * * * *", "invalid minute field '1-2-3'"),
        ("0,,5 0 * * *", "invalid minute field '0,,5'"),
        ("0, 0 * * *", "invalid minute field '0,'"),
        ("0 0 * * ,", "invalid day-of-week field ','"),
        ("0 -5 * * *", "invalid hour field '-5'"),
        ("0 0 * * \u017fun", "non-ASCII"),
        ("0 0 30 2 *", "never fires: day-of-month '30' never occurs in month '2'"),
        ("0 0 31 4,6,9,11 *", "never fires"),
        ("0 0 LW * */7", "never fires (no match within 5 years"),
        ("0 0 * 2 MON#5", "never fires (no match within 5 years"),
    ],
)
def test_invalid_specs_name_the_problem(spec: str, fragment: str) -> None:
    with pytest.raises(ScheduleError, match="reset schedule") as info:
        parse_reset(spec)
    assert fragment in str(info.value)
    assert repr(spec) in str(info.value)


def test_schedule_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid hour"):
        parse_reset("0 99 * * *")


def test_horizon_is_a_parameter() -> None:
    # A fifth Monday in February first happens in 1988, 18 years after the epoch.
    rare = parse_reset("0 0 * 2 MON#5", horizon_years=20)
    assert rare is not None
    assert utc(rare.next_after(0)) == datetime(1988, 2, 29, tzinfo=UTC)
    with pytest.raises(ScheduleError, match="within 18 years"):
        parse_reset("0 0 * 2 MON#5", horizon_years=18)
    # Leap days fire within the default horizon (1972).
    assert parse_reset("0 0 29 2 *") is not None
    for bad in (0, 51):
        with pytest.raises(ValueError, match="horizon_years"):
            parse_reset("daily", horizon_years=bad)


def test_hand_built_schedule_fails_as_schedule_error() -> None:
    with pytest.raises(ScheduleError, match="invalid cron expression"):
        Schedule(spec="x", expression="61 * * * *").next_after(0)
    with pytest.raises(ScheduleError, match="does not fire within 50 years"):
        Schedule(spec="x", expression="0 0 LW * */7").next_after(0)


# -- named schedules at concrete instants ---------------------------------


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        ("2024-01-31T12:00:00", "2024-02-01T00:00:00"),  # month end
        ("2023-12-31T23:59:59", "2024-01-01T00:00:00"),  # year end
        ("2024-02-28T00:00:00", "2024-02-29T00:00:00"),  # leap day exists in 2024
        ("2024-02-29T00:00:00", "2024-03-01T00:00:00"),
        ("2023-02-28T06:00:00", "2023-03-01T00:00:00"),  # and not in 2023
        ("1969-12-31T23:00:00", "1970-01-01T00:00:00"),  # across the epoch
    ],
)
def test_daily(t: str, expected: str) -> None:
    assert schedule("daily").next_after(at(t)) == at(expected)


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        ("2023-12-28T10:00:00", "2024-01-01T00:00:00"),  # Thursday to Monday, across the year end
        ("2024-01-01T00:00:00", "2024-01-08T00:00:00"),  # a Monday midnight is not after itself
        ("2024-02-26T00:00:01", "2024-03-04T00:00:00"),  # across a leap day
        ("2024-03-03T23:59:59", "2024-03-04T00:00:00"),  # Sunday night
    ],
)
def test_weekly(t: str, expected: str) -> None:
    assert schedule("weekly").next_after(at(t)) == at(expected)


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        ("2024-01-31T23:59:59", "2024-02-01T00:00:00"),
        ("2024-02-29T12:00:00", "2024-03-01T00:00:00"),  # leap day
        ("2023-02-28T12:00:00", "2023-03-01T00:00:00"),
        ("2023-12-15T00:00:00", "2024-01-01T00:00:00"),  # year end
        ("2024-03-01T00:00:00", "2024-04-01T00:00:00"),  # exact boundary
    ],
)
def test_monthly(t: str, expected: str) -> None:
    assert schedule("monthly").next_after(at(t)) == at(expected)


@pytest.mark.parametrize("spec", ["daily", "weekly", "monthly", "*/15 9-17 * * MON-FRI", "0 0 L * *"])
def test_next_after_is_strictly_after_a_boundary(spec: str) -> None:
    s = schedule(spec)
    boundary = s.next_after(at("2024-02-27T13:07:00"))
    assert s.next_after(boundary - 1) == boundary
    assert s.next_after(boundary) > boundary
    assert ends_between(s, boundary - 1, boundary) == [boundary]
    assert ends_between(s, boundary, boundary + 1) == []


def test_utc_is_used_across_a_dst_change() -> None:
    # Europe and the US change clocks in March 2024; UTC days stay 86,400 s.
    daily = schedule("daily")
    ends = ends_between(daily, at("2024-03-05T12:00:00"), at("2024-04-05T12:00:00"))
    assert ends[0] == at("2024-03-06T00:00:00")
    assert all(b - a == DAY for a, b in itertools.pairwise(ends))
    assert all(e % DAY == 0 for e in ends)


@pytest.fixture
def local_zone_new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        if time.localtime(0).tm_hour == 0:
            pytest.skip("no time zone database to switch the local zone")
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.usefixtures("local_zone_new_york")
def test_local_time_zone_is_ignored() -> None:
    assert schedule("daily").next_after(at("2024-03-10T03:30:00")) == at("2024-03-11T00:00:00")
    assert schedule("0 9 * * *").next_after(at("2024-11-03T08:00:00")) == at("2024-11-03T09:00:00")


# -- cron expressions ---------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "t", "expected"),
    [
        # ranges and steps: every 15 minutes in office hours on weekdays
        ("*/15 9-17 * * MON-FRI", "2024-03-01T09:00:00", "2024-03-01T09:15:00"),
        ("*/15 9-17 * * MON-FRI", "2024-03-01T17:45:00", "2024-03-04T09:00:00"),  # Friday to Monday
        ("*/15 9-17 * * 1-5", "2024-03-02T12:00:00", "2024-03-04T09:00:00"),  # Saturday
        # lists
        ("0 12 1,15 * *", "2024-03-02T00:00:00", "2024-03-15T12:00:00"),
        ("0 12 1,15 * *", "2024-03-15T12:00:00", "2024-04-01T12:00:00"),
        ("0,30 8,20 * * *", "2024-03-01T08:30:00", "2024-03-01T20:00:00"),
        # stepped hours and a stepped range
        ("30 */6 * * *", "2024-03-01T06:30:00", "2024-03-01T12:30:00"),
        ("0 0 1-31/10 * *", "2024-03-11T00:00:00", "2024-03-21T00:00:00"),
        ("0 0 1-31/10 * *", "2024-03-31T00:00:00", "2024-04-01T00:00:00"),
        # month names: yearly and quarterly
        ("0 0 1 jan *", "2024-01-01T00:00:00", "2025-01-01T00:00:00"),
        ("0 0 1 */3 *", "2024-02-10T00:00:00", "2024-04-01T00:00:00"),
        # Sunday is 0 and 7
        ("0 0 * * 0", "2024-03-01T00:00:00", "2024-03-03T00:00:00"),
        ("0 0 * * 7", "2024-03-01T00:00:00", "2024-03-03T00:00:00"),
        # both day fields restricted: either one matches (classic cron)
        ("0 0 13 * 5", "2024-09-01T00:00:00", "2024-09-06T00:00:00"),
        ("0 0 13 * 5", "2024-09-12T00:00:00", "2024-09-13T00:00:00"),
        # cronsim's last day of the month, last Friday, leap day
        ("0 0 L * *", "2024-02-01T00:00:00", "2024-02-29T00:00:00"),
        ("0 0 L * *", "2023-02-01T00:00:00", "2023-02-28T00:00:00"),
        ("0 0 * * 5L", "2024-03-01T00:00:00", "2024-03-29T00:00:00"),
        ("0 0 29 2 *", "2024-03-01T00:00:00", "2028-02-29T00:00:00"),
    ],
)
def test_cron_expressions(spec: str, t: str, expected: str) -> None:
    assert schedule(spec).next_after(at(t)) == at(expected)


# -- ends_between ---------------------------------------------------------


def test_ends_between_lists_every_end_in_order() -> None:
    daily = schedule("daily")
    start, now = at("2023-12-30T12:00:00"), at("2024-01-02T00:00:00")
    assert ends_between(daily, start, now) == [
        at("2023-12-31T00:00:00"),
        at("2024-01-01T00:00:00"),
        at("2024-01-02T00:00:00"),  # `now` itself counts
    ]
    assert ends_between(daily, at("2023-12-31T00:00:00"), now)[0] == at("2024-01-01T00:00:00")


def test_ends_between_empty_windows() -> None:
    daily = schedule("daily")
    t = at("2024-05-05T00:00:00")
    assert ends_between(daily, t, t) == []
    assert ends_between(daily, t, t - DAY) == []
    assert ends_between(daily, t, t + DAY - 1) == []


def test_ends_between_limit_keeps_the_oldest() -> None:
    minutely = schedule("* * * * *")
    start = at("2024-01-01T00:00:00")
    ends = ends_between(minutely, start, start + 10 * 365 * DAY, limit=5)
    assert ends == [start + 60 * i for i in range(1, 6)]


def test_catching_up_in_chunks_ends_every_season_exactly_once() -> None:
    every_minute = schedule("* * * * *")
    start, now = at("2024-02-28T12:00:00"), at("2024-03-01T12:00:00")
    ended: list[int] = []
    cursor = start
    for _ in range(100):  # bounded, so a cursor that does not advance fails instead of hanging
        chunk = ends_between(every_minute, cursor, now, limit=100)
        ended += chunk
        if len(chunk) < 100:
            break
        cursor = chunk[-1]
    assert ended == list(range(start + 60, now + 1, 60))
    assert ends_between(every_minute, start, now, limit=len(ended)) == ended


def test_ends_between_rejects_a_zero_limit() -> None:
    with pytest.raises(ValueError, match="limit"):
        ends_between(schedule("daily"), 0, DAY, limit=0)


def test_ends_between_is_fast_at_its_default_bound() -> None:
    # A per-minute board down for ten years: one call does bounded work.
    ends = ends_between(schedule("* * * * *"), 0, 10 * 365 * DAY)
    assert len(ends) == 10_000
    assert ends[-1] == 10_000 * 60


# -- properties ----------------------------------------------------------

# 1900 to 2200
instants = st.integers(min_value=-2_208_988_800, max_value=7_258_118_400)
specs = st.sampled_from(
    [
        "daily",
        "weekly",
        "monthly",
        "*/15 9-17 * * MON-FRI",
        "0 12 1,15 * *",
        "0 0 13 * 5",
        "0 0 L * *",
        "0 0 29 2 *",
        "17 3 * * 0",
    ]
)


@given(specs, instants)
def test_next_after_is_strictly_after_and_nothing_is_skipped(spec: str, t: int) -> None:
    s = schedule(spec)
    end = s.next_after(t)
    assert end > t
    assert end % 60 == 0
    assert ends_between(s, t, end) == [end]
    assert ends_between(s, t, end - 1) == []


@given(specs, instants, instants)
def test_next_after_is_monotonic(spec: str, t1: int, t2: int) -> None:
    s = schedule(spec)
    lo, hi = min(t1, t2), max(t1, t2)
    assert s.next_after(lo) <= s.next_after(hi)


@given(st.sampled_from(sorted(NAMED)), instants)
def test_named_schedules_are_aligned(name: str, t: int) -> None:
    end = utc(schedule(name).next_after(t))
    assert (end.hour, end.minute, end.second) == (0, 0, 0)
    if name == "weekly":
        assert end.weekday() == 0
        assert end.timestamp() - t <= 7 * DAY
    elif name == "monthly":
        assert end.day == 1
        assert end.timestamp() - t <= 31 * DAY
    else:
        assert end.timestamp() - t <= DAY


@given(
    st.sets(st.integers(0, 59), min_size=1, max_size=5),
    st.sets(st.integers(0, 23), min_size=1, max_size=5),
    instants,
)
def test_minute_and_hour_lists_match_a_brute_force_scan(minutes: set[int], hours: set[int], t: int) -> None:
    spec = f"{','.join(map(str, sorted(minutes)))} {','.join(map(str, sorted(hours)))} * * *"
    first_minute = t - t % 60 + 60
    expected = next(
        m
        for m in range(first_minute, first_minute + DAY + 60, 60)
        if utc(m).minute in minutes and utc(m).hour in hours
    )
    assert schedule(spec).next_after(t) == expected


@given(specs, instants, st.integers(0, 40 * DAY), st.integers(1, 50))
def test_chunked_ends_between_equals_one_call(spec: str, start: int, span: int, limit: int) -> None:
    s = schedule(spec)
    now = start + span
    whole = ends_between(s, start, now, limit=100_000)
    assert whole == sorted(set(whole))
    assert all(start < e <= now for e in whole)
    chunks: list[int] = []
    cursor = start
    for _ in range(len(whole) + 1):  # bounded, so a cursor that does not advance fails instead of hanging
        chunk = ends_between(s, cursor, now, limit=limit)
        assert len(chunk) <= limit
        chunks += chunk
        if len(chunk) < limit:
            break
        cursor = chunk[-1]
    assert chunks == whole


fields = st.text(alphabet="0123456789*/-,LW#", min_size=1, max_size=6) | st.sampled_from(
    ["MON", "jan", "SUN-SAT", "L", "LW", "5L", "1#2", "?", ""]
)


@given(st.lists(fields, min_size=1, max_size=7).map(" ".join) | st.text(max_size=30))
def test_any_text_parses_or_raises_schedule_error(spec: str) -> None:
    try:
        parsed = parse_reset(spec)
    except ScheduleError as exc:
        message = str(exc)
    else:
        if parsed is not None:
            assert parsed.spec == spec
            assert parsed.next_after(0) > 0
        return
    assert repr(spec) in message


# -- purity ---------------------------------------------------------------


def test_schedule_module_imports_only_the_allowed() -> None:
    source = (Path(__file__).parent.parent / "server" / "schedule.py").read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "schedule.py imports nothing from the package"
            assert node.module is not None
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "collections", "dataclasses", "datetime", "types", "cronsim"}
