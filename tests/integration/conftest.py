"""Integration fixtures: one moto server per test process, with the resources template.yaml declares."""

import os
import sys
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
from tests.support.gsi_lag import ARMED, GsiLag


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


# -- GSI lag: index reads that trail their writes, as on AWS (see tests/support/gsi_lag.py) -----------------

GSI_LAG_ENV = "BILLING_GSI_LAG"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "gsi_lag(**options): run the test with the GSI-lag double armed on the store's DynamoDB client; "
        "options are GsiLag's (lag_seconds, hide_all_recent, lag_base_table, clock)",
    )


def gsi_lag_options_from_env(value: str | None) -> dict[str, Any] | None:
    """Options for `GsiLag` from ``BILLING_GSI_LAG``, or None when the switch is off (unset, "", 0, off).

    Comma-separated words: ``1``/``on`` (default lag), a number of seconds (``0.5``), ``all`` (hide every
    write since the test started), ``gsi-only`` (leave eventually consistent base-table reads alone).
    """
    words = [word.strip().lower() for word in (value or "").split(",") if word.strip()]
    if not words or words == ["0"] or words[0] in ("off", "false", "no"):
        return None
    options: dict[str, Any] = {}
    for word in words:
        if word in ("1", "on", "true", "yes"):
            continue
        if word == "all":
            options["hide_all_recent"] = True
        elif word == "gsi-only":
            options["lag_base_table"] = False
        else:
            try:
                options["lag_seconds"] = float(word)
            except ValueError:
                raise pytest.UsageError(f"{GSI_LAG_ENV}={value!r}: unknown word {word!r}") from None
    return options


def dynamodb_client(store: BillingStore) -> Any:
    """The boto3 DynamoDB client a `BillingStore` talks through (shared by the whole test process)."""
    return store._db


@pytest.fixture
def gsi_lag_options() -> dict[str, Any]:
    """Override in a module (or conftest) to configure `gsi_lag` there, e.g. with a `ManualClock`."""
    return {}


@pytest.fixture
def gsi_lag(request: pytest.FixtureRequest, store: BillingStore, gsi_lag_options: dict[str, Any]) -> Iterator[GsiLag]:
    """The GSI-lag double armed on the store's client for this test, disarmed after it.

    Options, later ones winning: ``BILLING_GSI_LAG``, the `gsi_lag_options` fixture, the ``gsi_lag`` marker.
    Only this process's store client is hooked (each xdist worker has its own moto server and client); arm
    more clients with ``gsi_lag.arm(client)``.
    """
    options = dict(gsi_lag_options_from_env(os.environ.get(GSI_LAG_ENV)) or {})
    options |= gsi_lag_options
    marker = request.node.get_closest_marker("gsi_lag")
    if marker is not None:
        options |= marker.kwargs
    double = GsiLag(**options).arm(dynamodb_client(store))
    ARMED.append(double)
    try:
        yield double
    finally:
        ARMED.remove(double)
        double.disarm()
        if double.lagged_reads:
            sys.stderr.write(double.summary() + "\n")  # shown with a failing test's captured output


@pytest.fixture(autouse=True)
def _gsi_lag_on_request(request: pytest.FixtureRequest) -> None:
    """Arm `gsi_lag` before anything else for every test that uses the store when ``BILLING_GSI_LAG`` is on
    or the test (or its module, via ``pytestmark = pytest.mark.gsi_lag()``) carries the ``gsi_lag`` marker."""
    if "store" not in request.fixturenames:
        return
    wanted = request.node.get_closest_marker("gsi_lag") is not None
    if wanted or gsi_lag_options_from_env(os.environ.get(GSI_LAG_ENV)) is not None:
        request.getfixturevalue("gsi_lag")
