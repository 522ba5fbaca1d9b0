"""When the nightly jobs run in a zone, and which business date a run is for.

A run at a local time that a DST change skips may not happen that night, and one in a repeated hour may
happen twice; so each zone gets the earliest minute at or after the preferred time that none of its
transitions in the coming years touches (00:05 in most zones, 01:05 where clocks jump at midnight).
"""

from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from billing.localtime import TimezoneName, UtcInstant, local_date
from billing.schema import Model


class NightlyJob(StrEnum):
    DAILY_INVOICES = "daily_invoices"
    AUTOPAY = "autopay"
    FINANCE_EXPORT = "finance_export"


PREFERRED_LOCAL_TIME = {
    NightlyJob.DAILY_INVOICES: time(0, 5),  # just after midnight: yesterday is over everywhere in the zone
    NightlyJob.AUTOPAY: time(3, 30),  # after the invoices, inside the 00:00-06:00 AutoPay window
    NightlyJob.FINANCE_EXPORT: time(1, 15),  # the previous local day's CSVs, once its nightly invoices exist
}
LATEST_LOCAL_TIME = time(6, 0)


def _transitions(zone: ZoneInfo, start: datetime, years: int) -> list[datetime]:
    """UTC instants (to the minute) at which the zone's offset changes, found by daily probes and bisection."""
    found = []
    day = start.replace(second=0, microsecond=0)
    offset = day.astimezone(zone).utcoffset()
    for _ in range(years * 366):
        following = day + timedelta(days=1)
        next_offset = following.astimezone(zone).utcoffset()
        if next_offset != offset:
            low, high = 0, 24 * 60  # minutes after `day`: offset unchanged at low, changed at high
            while high - low > 1:
                middle = (low + high) // 2
                if (day + timedelta(minutes=middle)).astimezone(zone).utcoffset() == offset:
                    low = middle
                else:
                    high = middle
            found.append(day + timedelta(minutes=high))
            offset = next_offset
        day = following
    return found


def _touched_local_minutes(zone: ZoneInfo, transition: datetime) -> set[time]:
    """Local wall-clock minutes skipped (gap) or repeated (fold) by one transition."""
    before = (transition - timedelta(minutes=1)).astimezone(zone).replace(tzinfo=None) + timedelta(minutes=1)
    after = transition.astimezone(zone).replace(tzinfo=None)
    start, end = min(before, after), max(before, after)
    touched = set()
    while start < end:
        touched.add(start.time().replace(fold=0))
        start += timedelta(minutes=1)
    return touched


def nightly_run_time(timezone: str, job: NightlyJob, now: datetime, years: int = 10) -> time:
    """The local time the job runs at in ``timezone``: the preferred time, or the next safe minute after it."""
    zone = ZoneInfo(timezone)
    touched: set[time] = set()
    for transition in _transitions(zone, now.astimezone(UTC), years):
        touched |= _touched_local_minutes(zone, transition)
    candidate = datetime.combine(date(2000, 1, 1), PREFERRED_LOCAL_TIME[job])
    while candidate.time() < LATEST_LOCAL_TIME:
        if candidate.time() not in touched:
            return candidate.time()
        candidate += timedelta(minutes=1)
    return PREFERRED_LOCAL_TIME[job]


def business_date(scheduled_time: datetime, timezone: str) -> date:
    """The local date a nightly run is for: the date, in the zone, of the instant the schedule fired for."""
    return local_date(scheduled_time, timezone)


class NightlyRun(Model):
    """What a per-zone schedule sends its entry function."""

    schedule: NightlyJob
    timezone: TimezoneName
    scheduled_time: UtcInstant
    # When the run happens. Absent in AWS (the entry's clock says); the local scheduler sets it to the instant
    # it simulates, so a night fired on demand behaves as it would at that time.
    invoked_at: UtcInstant | None = None


class PracticeNight(Model):
    """One practice's share of a nightly run (an SQS message body)."""

    practice_id: str
    business_date: date
