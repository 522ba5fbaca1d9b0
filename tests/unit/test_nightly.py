"""Nightly runs avoid local times that DST changes skip or repeat, and know their business date."""

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from billing.nightly import NightlyJob, business_date, nightly_run_time
from billing_aws.schedules import retry_policy

NOW = datetime(2026, 11, 27, tzinfo=UTC)


def _is_real_and_unique(zone: str, day: date, at: time) -> bool:
    """The wall-clock time exists exactly once on that day (no gap, no fold)."""
    tz = ZoneInfo(zone)
    naive = datetime.combine(day, at)
    first = naive.replace(tzinfo=tz, fold=0)
    second = naive.replace(tzinfo=tz, fold=1)
    round_trip = first.astimezone(UTC).astimezone(tz).replace(tzinfo=None)
    return round_trip == naive and first.utcoffset() == second.utcoffset()


@pytest.mark.parametrize(
    "zone",
    ["America/New_York", "Europe/London", "Europe/Berlin", "Australia/Lord_Howe", "America/Santiago", "America/Havana"],
)
@pytest.mark.parametrize("job", list(NightlyJob))
def test_the_run_time_exists_exactly_once_every_day_for_years(zone: str, job: NightlyJob) -> None:
    at = nightly_run_time(zone, job, NOW)
    assert time(0, 0) <= at < time(6, 0)
    day = NOW.date()
    for _ in range(3 * 366):
        assert _is_real_and_unique(zone, day, at), (zone, day, at)
        day += timedelta(days=1)


def test_zones_without_midnight_changes_run_just_after_midnight() -> None:
    assert nightly_run_time("America/Chicago", NightlyJob.DAILY_INVOICES, NOW) == time(0, 5)


def test_zones_whose_clocks_jump_at_midnight_run_later() -> None:
    assert nightly_run_time("America/Santiago", NightlyJob.DAILY_INVOICES, NOW) >= time(1, 0)


def test_business_date_is_the_local_date_the_schedule_fired_for() -> None:
    # 00:05 in Chicago on 2026-11-28 is 06:05Z.
    assert business_date(datetime(2026, 11, 28, 6, 5, tzinfo=UTC), "America/Chicago") == date(2026, 11, 28)
    # 00:05 in Sydney on 2026-11-28 is still 2026-11-27 in UTC.
    assert business_date(datetime(2026, 11, 27, 13, 5, tzinfo=UTC), "Australia/Sydney") == date(2026, 11, 28)


@pytest.mark.parametrize(
    "zone", ["America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "America/Santiago", "Asia/Kolkata"]
)
def test_autopay_runs_after_the_nights_invoicing_and_its_retries_end_inside_the_window(zone: str) -> None:
    invoicing = nightly_run_time(zone, NightlyJob.DAILY_INVOICES, NOW)
    charging = nightly_run_time(zone, NightlyJob.AUTOPAY, NOW)
    assert invoicing < charging < time(6, 0)
    retries = retry_policy(NightlyJob.AUTOPAY, charging)
    last_retry = datetime.combine(date(2026, 1, 1), charging) + timedelta(seconds=retries["MaximumEventAgeInSeconds"])
    assert last_retry.time() < time(6, 0)
