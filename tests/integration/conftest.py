"""Integration fixtures: one moto server per test process, with the resources template.yaml declares."""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing.calendar import AppointmentRequest, AppointmentStatus, schedule_appointment
from billing.clients import ClientDetails, add_client
from billing.practices import InvoiceCreation, Practice, PracticeSettings, save_practice
from billing_aws.store import BillingStore
from local.aws import LocalAws, provision, start_moto
from local.template import Resolver, load_template


@pytest.fixture(scope="session")
def local_aws() -> Iterator[tuple[LocalAws, Resolver]]:
    aws = start_moto()
    resolver = provision(aws, load_template())
    yield aws, resolver
    aws.stop()


@pytest.fixture
def store(local_aws: tuple[LocalAws, Resolver]) -> BillingStore:
    aws, resolver = local_aws
    return BillingStore(aws.client("dynamodb"), resolver.physical_name("BillingTable"))


class FixedClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime):
        self.current = now

    def now(self) -> datetime:
        return self.current

    def advance(self, **delta: float) -> None:
        self.current += timedelta(**delta)


class NoSchedules:
    def ensure_timezone(self, timezone: str) -> None:
        return None


@dataclass
class Books:
    """A practice set up in the store, with helpers to add clients and appointments."""

    store: BillingStore
    clock: FixedClock
    practice: Practice

    @property
    def practice_id(self) -> str:
        return self.practice.practice_id

    def client(self) -> str:
        details = ClientDetails(first_name="Test", last_name="Client")
        return add_client(self.store, self.clock, self.practice_id, details).client_id

    def appointment(
        self, client_id: str, starts_at: str, fee_cents: int = 15000, status: str = "show", **extra: Any
    ) -> str:
        request = AppointmentRequest(
            client_id=client_id,
            starts_at=datetime.fromisoformat(starts_at),
            duration_minutes=50,
            service_code="90837",
            fee_cents=fee_cents,
            status=AppointmentStatus(status),
            **extra,
        )
        return schedule_appointment(self.store, self.clock, self.practice, request).appointment_id

    def refresh(self) -> Practice:
        found = self.store.get_practice(self.practice_id)
        assert found is not None
        self.practice = found
        return found


def open_books(
    store: BillingStore, timezone: str = "America/Chicago", creation: str = "daily", practice_id: str | None = None
) -> Books:
    import uuid

    clock = FixedClock(datetime(2026, 11, 27, 15, 0, tzinfo=UTC))
    settings = PracticeSettings(name="Test", timezone=timezone, invoice_creation=InvoiceCreation(creation))
    practice = save_practice(store, NoSchedules(), clock, practice_id or f"prac_{uuid.uuid4().hex}", settings)
    return Books(store, clock, practice)


@pytest.fixture
def books(store: BillingStore) -> Books:
    return open_books(store)
