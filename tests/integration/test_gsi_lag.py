"""The GSI-lag double (tests/support/gsi_lag.py) makes moto's index reads trail their writes, as AWS does.

Every test here runs the double from the `gsi_lag` fixture with a hand-moved clock (`gsi_lag_options` below,
overridden per test by the ``gsi_lag`` marker), so nothing depends on timing unless a test says so.
"""

import time
from datetime import date
from typing import Any

import boto3.session
import pytest

from billing_aws import keys
from billing_aws.codec import to_attributes, to_value
from billing_aws.store import BillingStore
from local.aws import LocalAws
from local.template import Resolver
from tests.integration.conftest import Books, dynamodb_client, gsi_lag_options_from_env
from tests.support.gsi_lag import GsiLag, ManualClock

DAY = date(2026, 11, 26)  # the local (Chicago) date of the appointments below


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def gsi_lag_options(clock: ManualClock) -> dict[str, Any]:
    return {"lag_seconds": 1.0, "hide_all_recent": False, "lag_base_table": True, "clock": clock}


def _settled_books(books: Books, gsi_lag: GsiLag) -> tuple[str, str]:
    """A client with one appointment on DAY, written long enough ago for every index to show it."""
    client = books.client()
    appointment = books.appointment(client, "2026-11-26T15:00:00Z")
    gsi_lag.settle()
    return client, appointment


def _change(books: Books, appointment_id: str, **changes: Any) -> None:
    """Replace an appointment through the store's versioned Put (one TransactWriteItems)."""
    current = books.store.get_appointment(books.practice_id, appointment_id)
    assert current is not None
    changed = current.model_copy(update={**changes, "version": current.version + 1})
    books.store.replace_appointment(books.practice_id, changed, expected_version=current.version)


def _calendar(books: Books) -> list[str]:
    return [a.appointment_id for a in books.store.appointments_on(books.practice_id, DAY)]


def test_a_gsi_query_right_after_a_write_does_not_see_the_item_until_the_lag_has_passed(
    books: Books, gsi_lag: GsiLag, clock: ManualClock
) -> None:
    client, first = _settled_books(books, gsi_lag)
    second = books.appointment(client, "2026-11-26T17:00:00Z")  # PutItem with GSI1 and GSI3 keys
    assert _calendar(books) == [first]  # GSI1
    assert [a.appointment_id for a in books.store.uninvoiced_appointments(books.practice_id)] == [first]  # GSI3
    assert gsi_lag.lagged_reads == 2
    assert {(r.index, r.served) for r in gsi_lag.log} == {("GSI1", "hidden"), ("GSI3", "hidden")}
    clock.advance(0.9)
    assert _calendar(books) == [first]
    clock.advance(0.2)  # 1.1 s after the write
    assert _calendar(books) == [first, second]
    assert {a.appointment_id for a in books.store.uninvoiced_appointments(books.practice_id)} == {first, second}


def test_the_double_can_fail_a_test_that_reads_its_own_write_through_an_index(books: Books, gsi_lag: GsiLag) -> None:
    client, _ = _settled_books(books, gsi_lag)
    new = books.appointment(client, "2026-11-26T19:00:00Z")
    with pytest.raises(AssertionError):
        assert new in _calendar(books)


def test_a_changed_item_is_served_in_its_previous_version_after_a_transaction(
    books: Books, gsi_lag: GsiLag, clock: ManualClock
) -> None:
    _, appointment = _settled_books(books, gsi_lag)
    _change(books, appointment, fee_cents=9000)
    (seen,) = books.store.appointments_on(books.practice_id, DAY)
    assert (seen.fee_cents, seen.version) == (15000, 1)
    assert [r.served for r in gsi_lag.log] == ["previous"]
    clock.advance(1.5)
    (seen,) = books.store.appointments_on(books.practice_id, DAY)
    assert (seen.fee_cents, seen.version) == (9000, 2)


def test_an_item_a_transaction_took_out_of_a_sparse_index_is_still_listed_until_the_lag_passes(
    books: Books, gsi_lag: GsiLag, clock: ManualClock
) -> None:
    _, appointment = _settled_books(books, gsi_lag)
    _change(books, appointment, invoice_id="inv_somewhere")  # an invoiced appointment leaves the GSI3 work list
    (stale,) = books.store.uninvoiced_appointments(books.practice_id)
    assert (stale.appointment_id, stale.invoice_id, stale.version) == (appointment, None, 1)
    (calendar,) = books.store.appointments_on(books.practice_id, DAY)  # GSI1: the previous version
    assert calendar.invoice_id is None
    assert {(r.index, r.served) for r in gsi_lag.log} == {("GSI3", "stale"), ("GSI1", "previous")}
    clock.advance(1.01)
    assert books.store.uninvoiced_appointments(books.practice_id) == []
    (calendar,) = books.store.appointments_on(books.practice_id, DAY)
    assert calendar.invoice_id == "inv_somewhere"


def test_strongly_consistent_reads_see_the_write_at_once(books: Books, store: BillingStore, gsi_lag: GsiLag) -> None:
    client, appointment = _settled_books(books, gsi_lag)
    _change(books, appointment, fee_cents=9000)
    new = books.appointment(client, "2026-11-26T17:00:00Z")
    assert store.get_appointment(books.practice_id, appointment).fee_cents == 9000  # type: ignore[union-attr]
    assert store.get_appointment(books.practice_id, new) is not None  # GetItem, ConsistentRead
    found = store.appointments_by_id(books.practice_id, [appointment, new])  # BatchGetItem, ConsistentRead
    assert {a.appointment_id: a.fee_cents for a in found} == {appointment: 9000, new: 15000}
    on_table = dynamodb_client(store).query(
        TableName=store._table,
        KeyConditionExpression="PK = :pk AND begins_with(SK, :prefix)",
        ExpressionAttributeValues={
            ":pk": to_value(keys.practice_pk(books.practice_id)),
            ":prefix": {"S": "APPOINTMENT#"},
        },
        ConsistentRead=True,
    )
    assert on_table["Count"] == 2
    assert gsi_lag.lagged_reads == 0


def test_eventually_consistent_base_table_reads_lag_too(books: Books, store: BillingStore, gsi_lag: GsiLag) -> None:
    client, appointment = _settled_books(books, gsi_lag)
    _change(books, appointment, fee_cents=9000)
    new = books.appointment(client, "2026-11-26T17:00:00Z")
    db = dynamodb_client(store)

    def key(appointment_id: str) -> dict[str, Any]:
        return to_attributes(keys.key(books.practice_id, keys.appointment_sk(appointment_id)))

    assert "Item" not in db.get_item(TableName=store._table, Key=key(new))
    assert db.get_item(TableName=store._table, Key=key(appointment))["Item"]["fee_cents"] == {"N": "15000"}
    batch = db.batch_get_item(RequestItems={store._table: {"Keys": [key(appointment), key(new)]}})
    assert [item["fee_cents"] for item in batch["Responses"][store._table]] == [{"N": "15000"}]
    listing = db.query(
        TableName=store._table,
        KeyConditionExpression="PK = :pk AND begins_with(SK, :prefix)",
        ExpressionAttributeValues={
            ":pk": to_value(keys.practice_pk(books.practice_id)),
            ":prefix": {"S": "APPOINTMENT#"},
        },
    )
    assert [item["fee_cents"] for item in listing["Items"]] == [{"N": "15000"}]
    assert listing["Count"] == 1


@pytest.mark.gsi_lag(lag_base_table=False)
def test_base_table_lag_can_be_turned_off(books: Books, store: BillingStore, gsi_lag: GsiLag) -> None:
    client, _ = _settled_books(books, gsi_lag)
    new = books.appointment(client, "2026-11-26T17:00:00Z")
    key = to_attributes(keys.key(books.practice_id, keys.appointment_sk(new)))
    assert "Item" in dynamodb_client(store).get_item(TableName=store._table, Key=key)
    assert new not in _calendar(books)  # the GSI still lags


def test_batch_writes_and_deletes_are_followed(
    books: Books, store: BillingStore, gsi_lag: GsiLag, clock: ManualClock
) -> None:
    client, _ = _settled_books(books, gsi_lag)
    pk, gsi2pk = keys.practice_pk(books.practice_id), keys.client_gsi2pk(books.practice_id, client)

    def card(card_id: str) -> dict[str, Any]:
        return {
            "PK": pk,
            "SK": keys.card_sk(card_id),
            "kind": "card",
            "GSI2PK": gsi2pk,
            "GSI2SK": f"CARD#2026-11-26T00:00:00Z#{card_id}",
            "card_id": card_id,
        }

    db = dynamodb_client(store)
    old = card("card_old")
    db.put_item(TableName=store._table, Item=to_attributes(old))
    gsi_lag.settle()
    db.batch_write_item(
        RequestItems={
            store._table: [
                {"PutRequest": {"Item": to_attributes(card("card_new"))}},
                {"DeleteRequest": {"Key": to_attributes({"PK": pk, "SK": keys.card_sk("card_old")})}},
            ]
        }
    )

    def timeline() -> list[str]:
        response = db.query(
            TableName=store._table,
            IndexName="GSI2",
            KeyConditionExpression="GSI2PK = :pk AND begins_with(GSI2SK, :card)",
            ExpressionAttributeValues={":pk": to_value(gsi2pk), ":card": {"S": "CARD#"}},
        )
        return [item["card_id"]["S"] for item in response["Items"]]

    assert timeline() == ["card_old"]  # the deleted card is still listed, the new one not yet
    assert sorted(r.served for r in gsi_lag.log) == ["hidden", "stale"]
    clock.advance(2)
    assert timeline() == ["card_new"]


def test_failed_writes_change_nothing(books: Books, store: BillingStore, gsi_lag: GsiLag) -> None:
    _, appointment = _settled_books(books, gsi_lag)
    writes_before = gsi_lag.writes_seen
    current = store.get_appointment(books.practice_id, appointment)
    assert current is not None
    changed = current.model_copy(update={"fee_cents": 1, "version": 3})
    with pytest.raises(Exception, match="changed"):
        store.replace_appointment(books.practice_id, changed, expected_version=2)  # version 2 is not stored
    assert gsi_lag.writes_seen == writes_before
    assert _calendar(books) == [appointment] and gsi_lag.lagged_reads == 0


def test_count_scanned_count_filters_and_projections_follow_the_lagged_view(
    books: Books, store: BillingStore, gsi_lag: GsiLag
) -> None:
    ann, ann_settled = _settled_books(books, gsi_lag)
    bob = books.client()
    gsi_lag.settle()
    _change(books, ann_settled, fee_cents=9000)
    books.appointment(ann, "2026-11-26T17:00:00Z")
    books.appointment(bob, "2026-11-26T18:00:00Z")
    db = dynamodb_client(store)
    query = {
        "TableName": store._table,
        "IndexName": "GSI3",
        "KeyConditionExpression": "GSI3PK = :pk",
        "FilterExpression": "client_id = :client",
        "ExpressionAttributeValues": {
            ":pk": to_value(keys.uninvoiced_gsi3pk(books.practice_id)),
            ":client": {"S": ann},
        },
    }
    listing = db.query(**query, ProjectionExpression="appointment_id, fee_cents")
    assert listing["Items"] == [{"appointment_id": {"S": ann_settled}, "fee_cents": {"N": "15000"}}]
    assert (listing["Count"], listing["ScannedCount"]) == (1, 1)
    assert db.query(**query, Select="COUNT")["Count"] == 1
    everyone = db.query(**{**query, "FilterExpression": "attribute_exists(client_id)"})
    assert everyone["Count"] == 1 and everyone["ScannedCount"] == 1


def test_pages_list_a_previous_version_exactly_once(books: Books, store: BillingStore, gsi_lag: GsiLag) -> None:
    client = books.client()
    appointments = [books.appointment(client, f"2026-11-26T{hour}:00:00Z") for hour in (14, 15, 16, 17, 18)]
    gsi_lag.settle()
    for appointment in appointments[1:4]:
        _change(books, appointment, fee_cents=1)
    newest = books.appointment(client, "2026-11-26T19:00:00Z")
    db = dynamodb_client(store)
    seen: list[tuple[str, str]] = []
    request: dict[str, Any] = {
        "TableName": store._table,
        "IndexName": "GSI1",
        "KeyConditionExpression": "GSI1PK = :pk",
        "ExpressionAttributeValues": {":pk": to_value(keys.calendar_gsi1pk(books.practice_id, DAY))},
        "Limit": 2,
    }
    for forward in (True, False):
        seen.clear()
        request.pop("ExclusiveStartKey", None)
        while True:
            page = db.query(**request, ScanIndexForward=forward)
            seen += [(item["appointment_id"]["S"], item["fee_cents"]["N"]) for item in page["Items"]]
            if "LastEvaluatedKey" not in page:
                break
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        expected = [(a, "15000") for a in appointments]
        assert seen == (expected if forward else expected[::-1])
        assert newest not in {a for a, _ in seen}


@pytest.mark.gsi_lag(hide_all_recent=True)
def test_hide_all_recent_hides_every_write_since_arming_until_settled(
    books: Books, gsi_lag: GsiLag, clock: ManualClock
) -> None:
    client, first = _settled_books(books, gsi_lag)
    second = books.appointment(client, "2026-11-26T17:00:00Z")
    clock.advance(3600)
    assert _calendar(books) == [first]
    gsi_lag.settle()
    assert _calendar(books) == [first, second]


@pytest.mark.gsi_lag(lag_seconds=0.3, clock=time.monotonic)
def test_with_the_real_clock_the_item_shows_once_the_lag_has_passed(books: Books, gsi_lag: GsiLag) -> None:
    client, first = _settled_books(books, gsi_lag)
    second = books.appointment(client, "2026-11-26T17:00:00Z")
    assert _calendar(books) == [first]
    time.sleep(0.35)
    assert _calendar(books) == [first, second]


def test_disarming_restores_motos_behaviour(books: Books, store: BillingStore, gsi_lag: GsiLag) -> None:
    client, first = _settled_books(books, gsi_lag)
    writes_before = gsi_lag.writes_seen
    second = books.appointment(client, "2026-11-26T17:00:00Z")
    assert _calendar(books) == [first]
    gsi_lag.disarm()
    assert not gsi_lag.armed
    assert _calendar(books) == [first, second]
    third = books.appointment(client, "2026-11-26T18:00:00Z")
    assert _calendar(books) == [first, second, third]
    assert gsi_lag.lagged_reads == 1 and gsi_lag.writes_seen == writes_before + 1


def test_the_armed_client_makes_only_its_callers_calls(books: Books, store: BillingStore, gsi_lag: GsiLag) -> None:
    """The double reads previous versions and table schemas through a client of its own."""
    client, _ = _settled_books(books, gsi_lag)
    calls: list[str] = []

    def count(event_name: str, **_: object) -> None:
        calls.append(event_name.rsplit(".", 1)[-1])

    events = dynamodb_client(store).meta.events
    events.register("before-call.dynamodb", count)
    try:
        books.appointment(client, "2026-11-26T17:00:00Z")
        _calendar(books)
    finally:
        events.unregister("before-call.dynamodb", count)
    assert calls == ["PutItem", "Query"]
    assert gsi_lag.lagged_reads == 1


def test_a_write_is_lagged_from_the_moment_it_lands(books: Books, store: BillingStore, gsi_lag: GsiLag) -> None:
    """A read racing the write (here: run the instant moto answered the PutItem) does not see it either."""
    client, first = _settled_books(books, gsi_lag)
    seen: list[list[str]] = []

    def peek(**_: object) -> None:
        seen.append(_calendar(books))

    events = dynamodb_client(store).meta.events
    events.register_first("after-call.dynamodb.PutItem", peek)
    try:
        books.appointment(client, "2026-11-26T17:00:00Z")
    finally:
        events.unregister("after-call.dynamodb.PutItem", peek)
    assert seen == [[first]]


def test_clients_armed_on_one_double_share_its_view(
    books: Books, store: BillingStore, gsi_lag: GsiLag, local_aws: tuple[LocalAws, Resolver]
) -> None:
    _, first = _settled_books(books, gsi_lag)
    aws, _ = local_aws
    other = boto3.session.Session(region_name=aws.region).client("dynamodb", endpoint_url=aws.endpoint)
    gsi_lag.arm(other)
    BillingStore(other, store._table).add_appointment(
        books.practice_id,
        store.get_appointment(books.practice_id, first).model_copy(update={"appointment_id": "apt_other"}),  # type: ignore[union-attr]
    )
    assert _calendar(books) == [first]  # written through one client, lagged for the other
    assert [a.appointment_id for a in BillingStore(other, store._table).appointments_on(books.practice_id, DAY)] == [
        first
    ]
    gsi_lag.disarm(other)
    assert _calendar(books) == [first]  # still armed on the store's client
    on_other = BillingStore(other, store._table).appointments_on(books.practice_id, DAY)
    assert sorted(a.appointment_id for a in on_other) == sorted([first, "apt_other"])  # moto's view again


@pytest.mark.gsi_lag()
def test_the_marker_arms_the_double_for_a_test_that_only_uses_the_store(
    store: BillingStore, clock: ManualClock
) -> None:
    from tests.integration.conftest import open_books

    books = open_books(store)
    client = books.client()
    books.appointment(client, "2026-11-26T17:00:00Z")
    assert store.appointments_on(books.practice_id, DAY) == []
    clock.advance(1.5)
    assert len(store.appointments_on(books.practice_id, DAY)) == 1


@pytest.mark.parametrize(
    ("value", "options"),
    [
        (None, None),
        ("", None),
        ("0", None),
        ("off", None),
        ("1", {}),
        ("on", {}),
        ("0.25", {"lag_seconds": 0.25}),
        ("all", {"hide_all_recent": True}),
        ("all,gsi-only", {"hide_all_recent": True, "lag_base_table": False}),
    ],
)
def test_the_environment_switch(value: str | None, options: dict[str, Any] | None) -> None:
    assert gsi_lag_options_from_env(value) == options


def test_an_unknown_environment_word_is_refused() -> None:
    with pytest.raises(pytest.UsageError):
        gsi_lag_options_from_env("sometimes")
