"""The billing single table behind the domain's store interfaces. Query and GetItem only; never Scan."""

from collections.abc import Iterator
from datetime import date
from typing import Any

from botocore.exceptions import ClientError

from billing.autopay import Attempt, AutoPayState, Outcome
from billing.books import Account, ClientLedger
from billing.calendar import Appointment, AppointmentStatus
from billing.cards import Card
from billing.clients import Client
from billing.errors import StaleState
from billing.invoices import Invoice
from billing.payments import IdempotencyRecord, Payment, ProcessorRefundLink, Refund
from billing.practices import Practice, PracticeSettings
from billing.unit_of_work import MAX_ITEMS, AccountChange, Changed, Created, UnitOfWork
from billing_aws import keys
from billing_aws.codec import from_attributes, record_attributes, to_attributes, to_value

# Attributes that are storage bookkeeping, not part of any domain object.
_KEY_ATTRIBUTES = frozenset({"PK", "SK", "GSI1PK", "GSI1SK", "GSI2PK", "GSI2SK", "GSI3PK", "GSI3SK", "kind"})
ACCOUNT_FIELDS = ("invoiced_cents", "paid_cents", "refunded_cents", "unallocated_credit_cents")
# On the client item: its open invoices and its payments holding credit, as maps of id -> true, so that the
# transactions that move money keep them exact and a use case reads them consistently (no index lag).
OPEN_INVOICES = "open_invoices"
CREDIT_PAYMENTS = "credit_payments"
CARDS = "cards"
AUTOPAY = "autopay"
# What a practice item's settings are: exactly these fields are written by save_practice, nothing else
# (the invoice counter beside them is moved only by the transaction that issues an invoice).
_PRACTICE_FIELDS = (*PracticeSettings.model_fields, "practice_id", "created_at", "updated_at")


def _domain_fields(item: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in from_attributes(item).items() if name not in _KEY_ATTRIBUTES}


# Why DynamoDB cancels a transaction when another writer got there first: a lost race, to plan again. Any other
# reason (a throttle on one item, an item too large, a validation error) is not a race and must not be retried
# as one: a throttle surfaces as unavailable (503), a validation error as the bug it is.
_RACE_REASONS = frozenset({"None", "ConditionalCheckFailed", "TransactionConflict"})


def is_condition_failure(error: ClientError) -> bool:
    """Whether a write lost to a concurrent writer: its condition failed, or its transaction was cancelled
    for conditions and conflicts only (``CancellationReasons``; none given counts as a race, as moto
    sometimes omits them)."""
    code = error.response.get("Error", {}).get("Code")
    if code == "ConditionalCheckFailedException":
        return True
    if code != "TransactionCanceledException":
        return False
    reasons = error.response.get("CancellationReasons") or []
    return all(str(reason.get("Code", "None")) in _RACE_REASONS for reason in reasons)


class BillingStore:
    """Repository over one DynamoDB table (``PK``/``SK`` plus ``GSI1``..``GSI3``), speaking domain objects."""

    def __init__(self, client: Any, table_name: str):
        self._db = client
        self._table = table_name

    # -- low-level helpers -------------------------------------------------------------------------
    def _get(self, practice_id: str, sort_key: str) -> dict[str, Any] | None:
        response = self._db.get_item(
            TableName=self._table, Key=to_attributes(keys.key(practice_id, sort_key)), ConsistentRead=True
        )
        item = response.get("Item")
        return _domain_fields(item) if item else None

    def _query(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """All items of one Query, following pagination."""
        kwargs["TableName"] = self._table
        while True:
            response = self._db.query(**kwargs)
            for item in response.get("Items", []):
                yield _domain_fields(item)
            if "LastEvaluatedKey" not in response:
                return
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    # -- practices ---------------------------------------------------------------------------------
    def get_practice(self, practice_id: str) -> Practice | None:
        found = self._get(practice_id, keys.PRACTICE_SK)
        return Practice.model_validate(found) if found else None

    def save_practice(self, practice: Practice) -> Practice:
        """Create or replace the settings; the invoice number counter is never touched here."""
        stored = record_attributes(practice)
        values = {name: stored[name] for name in _PRACTICE_FIELDS} | {
            "kind": "practice",
            "GSI1PK": keys.zone_gsi1pk(practice.timezone),
            "GSI1SK": keys.practice_pk(practice.practice_id),
        }
        names = {f"#f{i}": name for i, name in enumerate(values)}
        attribute_values = {f":v{i}": to_value(value) for i, value in enumerate(values.values())}
        assignments = ", ".join(f"#f{i} = :v{i}" for i in range(len(values)))
        self._db.update_item(
            TableName=self._table,
            Key=to_attributes(keys.key(practice.practice_id, keys.PRACTICE_SK)),
            UpdateExpression=f"SET {assignments}, #counter = if_not_exists(#counter, :zero)",
            ExpressionAttributeNames=names | {"#counter": "last_invoice_sequence"},
            ExpressionAttributeValues=attribute_values | {":zero": {"N": "0"}},
        )
        return practice

    def practices_in_zone(self, timezone: str) -> list[Practice]:
        return [
            Practice.model_validate(found)
            for found in self._query(
                IndexName="GSI1",
                KeyConditionExpression="GSI1PK = :pk",
                ExpressionAttributeValues={":pk": to_value(keys.zone_gsi1pk(timezone))},
            )
        ]

    # -- clients -----------------------------------------------------------------------------------
    def get_client(self, practice_id: str, client_id: str) -> Client | None:
        found = self._get(practice_id, keys.client_sk(client_id))
        return Client.model_validate(found) if found else None

    def add_client(self, practice_id: str, client: Client) -> None:
        # The processor customer is set once, later, by set_processor_customer (if_not_exists).
        values = record_attributes(client, skip=frozenset({"processor_customer_id"})) | keys.key(
            practice_id, keys.client_sk(client.client_id)
        )
        values |= {"kind": "client", OPEN_INVOICES: {}, CREDIT_PAYMENTS: {}, CARDS: {}} | {
            name: 0 for name in ACCOUNT_FIELDS
        }
        self._db.put_item(
            TableName=self._table, Item=to_attributes(values), ConditionExpression="attribute_not_exists(PK)"
        )

    def get_autopay(self, practice_id: str, client_id: str) -> AutoPayState:
        found = self._get(practice_id, keys.client_sk(client_id)) or {}
        return AutoPayState.model_validate(found.get(AUTOPAY) or {})

    def save_autopay(self, practice_id: str, client_id: str, state: AutoPayState) -> None:
        """Write the client's AutoPay state if it is still the version it was planned from; an enrolled client
        sits in the practice's sparse AutoPay index (the night's work list), others do not."""
        names = {"#ap": AUTOPAY}
        values: dict[str, Any] = {":state": to_value(record_attributes(state))}
        if state.version <= 1:
            condition = "attribute_exists(PK) AND attribute_not_exists(#ap)"
        else:
            condition = "#ap.#v = :previous"
            names["#v"] = "version"
            values[":previous"] = to_value(state.version - 1)
        if state.enabled:
            update = "SET #ap = :state, GSI3PK = :work_list, GSI3SK = :client"
            values |= {":work_list": to_value(keys.autopay_gsi3pk(practice_id)), ":client": to_value(client_id)}
        else:
            update = "SET #ap = :state REMOVE GSI3PK, GSI3SK"
        try:
            self._db.update_item(
                TableName=self._table,
                Key=to_attributes(keys.key(practice_id, keys.client_sk(client_id))),
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            if is_condition_failure(error):
                raise StaleState("the client's AutoPay changed meanwhile; retry") from error
            raise

    def enrolled_clients(self, practice_id: str) -> list[str]:
        found = self._query(
            IndexName="GSI3",
            KeyConditionExpression="GSI3PK = :pk",
            ExpressionAttributeValues={":pk": to_value(keys.autopay_gsi3pk(practice_id))},
            ProjectionExpression="client_id",
        )
        return sorted({str(item["client_id"]) for item in found})

    def record_attempt(self, practice_id: str, attempt: Attempt) -> None:
        """The night's outcome for one client. A charge or a decline is final for the night: a repeat (or a
        concurrent run that found the payment in progress) may replace a skip, never a charge or decline."""
        sort_key = keys.autopay_attempt_sk(attempt.business_date, attempt.client_id)
        item = record_attributes(attempt) | keys.key(practice_id, sort_key) | {"kind": "autopay_attempt"}
        try:
            self._db.put_item(
                TableName=self._table,
                Item=to_attributes(item),
                ConditionExpression="attribute_not_exists(PK) OR #outcome = :skipped",
                ExpressionAttributeNames={"#outcome": "outcome"},
                ExpressionAttributeValues={":skipped": to_value(Outcome.SKIPPED.value)},
            )
        except ClientError as error:
            if not is_condition_failure(error):
                raise

    def attempts_on(self, practice_id: str, business_date: date) -> list[Attempt]:
        found = self._query(
            KeyConditionExpression="PK = :pk AND begins_with(SK, :prefix)",
            ExpressionAttributeValues={
                ":pk": to_value(keys.practice_pk(practice_id)),
                ":prefix": to_value(keys.autopay_attempts_prefix(business_date)),
            },
            ConsistentRead=True,
        )
        return [Attempt.model_validate(item) for item in found]

    def get_account(self, practice_id: str, client_id: str) -> Account:
        found = self._get(practice_id, keys.client_sk(client_id)) or {}
        return Account(**{name: found.get(name, 0) for name in ACCOUNT_FIELDS})

    # -- appointments ------------------------------------------------------------------------------
    @staticmethod
    def appointment_item(practice_id: str, appointment: Appointment) -> dict[str, Any]:
        """The stored form of an appointment, with the index keys its state calls for."""
        values = record_attributes(appointment) | keys.key(practice_id, keys.appointment_sk(appointment.appointment_id))
        values |= {
            "kind": "appointment",
            "GSI1PK": keys.calendar_gsi1pk(practice_id, appointment.local_date),
            "GSI1SK": f"{values['starts_at']}#{appointment.appointment_id}",
        }
        # Only appointments that may still be invoiced sit in the sparse uninvoiced index.
        if appointment.invoice_id is None and (
            appointment.billable or appointment.status is AppointmentStatus.SCHEDULED
        ):
            values["GSI3PK"] = keys.uninvoiced_gsi3pk(practice_id)
            values["GSI3SK"] = keys.uninvoiced_gsi3sk(appointment.local_date, appointment.appointment_id)
        return values

    def add_appointment(self, practice_id: str, appointment: Appointment) -> None:
        self._db.put_item(
            TableName=self._table,
            Item=to_attributes(self.appointment_item(practice_id, appointment)),
            ConditionExpression="attribute_not_exists(PK)",
        )

    def get_appointment(self, practice_id: str, appointment_id: str) -> Appointment | None:
        found = self._get(practice_id, keys.appointment_sk(appointment_id))
        return Appointment.model_validate(found) if found else None

    def replace_appointment(self, practice_id: str, appointment: Appointment, expected_version: int) -> None:
        """Write a changed appointment unless someone (an invoice run, another edit) changed it meanwhile."""
        assert appointment.version == expected_version + 1
        self._transact([self._versioned_put(self.appointment_item(practice_id, appointment), appointment.version)])

    def appointments_on(self, practice_id: str, day: date) -> list[Appointment]:
        return [
            Appointment.model_validate(found)
            for found in self._query(
                IndexName="GSI1",
                KeyConditionExpression="GSI1PK = :pk",
                ExpressionAttributeValues={":pk": to_value(keys.calendar_gsi1pk(practice_id, day))},
            )
        ]

    def uninvoiced_appointments(
        self, practice_id: str, *, before: date | None = None, client_id: str | None = None
    ) -> list[Appointment]:
        """Appointments not on any invoice (oldest first), optionally before a local date / of one client."""
        condition = "GSI3PK = :pk"
        values: dict[str, Any] = {":pk": to_value(keys.uninvoiced_gsi3pk(practice_id))}
        if before is not None:
            condition += " AND GSI3SK < :before"
            values[":before"] = to_value(before.isoformat())
        query: dict[str, Any] = {
            "IndexName": "GSI3",
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": values,
        }
        if client_id is not None:
            query["FilterExpression"] = "client_id = :client"
            values[":client"] = to_value(client_id)
        return [Appointment.model_validate(found) for found in self._query(**query)]

    def appointments_by_id(self, practice_id: str, appointment_ids: list[str]) -> list[Appointment]:
        """The practice's appointments among ``appointment_ids`` (unknown ids are simply absent)."""
        sort_keys = [keys.appointment_sk(i) for i in appointment_ids]
        return [Appointment.model_validate(found) for found in self._batch_get(practice_id, sort_keys)]

    # -- invoices ----------------------------------------------------------------------------------
    @staticmethod
    def invoice_item(practice_id: str, invoice: Invoice) -> dict[str, Any]:
        values = record_attributes(invoice, skip=frozenset({"as_of"}))
        return (
            values
            | keys.key(practice_id, keys.invoice_sk(invoice.invoice_id))
            | {
                "kind": "invoice",
                "GSI2PK": keys.client_gsi2pk(practice_id, invoice.client_id),
                "GSI2SK": keys.invoice_gsi2sk(invoice.sequence),
            }
        )

    def get_invoice(self, practice_id: str, invoice_id: str) -> Invoice | None:
        found = self._get(practice_id, keys.invoice_sk(invoice_id))
        return Invoice.model_validate(found) if found else None

    def invoices_of(self, practice_id: str, client_id: str) -> list[Invoice]:
        return [
            Invoice.model_validate(found)
            for found in self._query(
                IndexName="GSI2",
                KeyConditionExpression="GSI2PK = :pk AND begins_with(GSI2SK, :prefix)",
                ExpressionAttributeValues={
                    ":pk": to_value(keys.client_gsi2pk(practice_id, client_id)),
                    ":prefix": to_value(keys.INVOICE_GSI2_PREFIX),
                },
            )
        ]

    # -- payments ----------------------------------------------------------------------------------
    @staticmethod
    def payment_item(practice_id: str, payment: Payment) -> dict[str, Any]:
        values = record_attributes(payment) | keys.key(practice_id, keys.payment_sk(payment.payment_id))
        values |= {
            "kind": "payment",
            "GSI2PK": keys.client_gsi2pk(practice_id, payment.client_id),
            "GSI2SK": keys.payment_gsi2sk(values["created_at"], payment.payment_id),
        }
        return values

    def get_payment(self, practice_id: str, payment_id: str) -> Payment | None:
        found = self._get(practice_id, keys.payment_sk(payment_id))
        return Payment.model_validate(found) if found else None

    def payments_of(self, practice_id: str, client_id: str) -> list[Payment]:
        return [
            Payment.model_validate(found) for found in self._timeline(practice_id, client_id, keys.PAYMENT_GSI2_PREFIX)
        ]

    def _timeline(self, practice_id: str, client_id: str, prefix: str) -> Iterator[dict[str, Any]]:
        return self._query(
            IndexName="GSI2",
            KeyConditionExpression="GSI2PK = :pk AND begins_with(GSI2SK, :prefix)",
            ExpressionAttributeValues={
                ":pk": to_value(keys.client_gsi2pk(practice_id, client_id)),
                ":prefix": to_value(prefix),
            },
        )

    # -- refunds -----------------------------------------------------------------------------------
    @staticmethod
    def refund_item(practice_id: str, refund: Refund) -> dict[str, Any]:
        values = record_attributes(refund) | keys.key(practice_id, keys.refund_sk(refund.refund_id))
        return values | {
            "kind": "refund",
            "GSI2PK": keys.client_gsi2pk(practice_id, refund.client_id),
            "GSI2SK": keys.timeline_gsi2sk(keys.REFUND_GSI2_PREFIX, values["created_at"], refund.refund_id),
        }

    def get_refund(self, practice_id: str, refund_id: str) -> Refund | None:
        found = self._get(practice_id, keys.refund_sk(refund_id))
        return Refund.model_validate(found) if found else None

    def refunds_of(self, practice_id: str, client_id: str) -> list[Refund]:
        return [
            Refund.model_validate(found) for found in self._timeline(practice_id, client_id, keys.REFUND_GSI2_PREFIX)
        ]

    # -- the one commit ------------------------------------------------------------------------------
    def _item_of(self, practice_id: str, record: Created | Changed) -> dict[str, Any]:
        if isinstance(record, Invoice):
            return self.invoice_item(practice_id, record)
        if isinstance(record, Payment):
            return self.payment_item(practice_id, record)
        if isinstance(record, Refund):
            return self.refund_item(practice_id, record)
        if isinstance(record, Appointment):
            return self.appointment_item(practice_id, record)
        if isinstance(record, IdempotencyRecord):
            return record_attributes(record) | keys.key(practice_id, keys.idempotency_sk(record.key_digest))
        if isinstance(record, ProcessorRefundLink):
            return record_attributes(record) | keys.key(practice_id, keys.refund_link_sk(record.processor_refund_id))
        raise TypeError(f"cannot store {type(record).__name__}")

    def _versioned_put(self, item: dict[str, Any], version: int) -> dict[str, Any]:
        """A transaction Put that only lands if the stored item is still at ``version - 1``."""
        return {
            "Put": {
                "TableName": self._table,
                "Item": to_attributes(item),
                "ConditionExpression": "#version = :expected",
                "ExpressionAttributeNames": {"#version": "version"},
                "ExpressionAttributeValues": {":expected": to_value(version - 1)},
            }
        }

    def _new_put(self, item: dict[str, Any]) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self._table,
                "Item": to_attributes(item),
                "ConditionExpression": "attribute_not_exists(PK)",
            }
        }

    def _account_update(self, practice_id: str, client_id: str, change: AccountChange) -> dict[str, Any]:
        """The client's running totals (ADD) and its open-invoice and credit lists (map entries, SET/REMOVE)."""
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        adds: list[str] = []
        sets: list[str] = []
        removes: list[str] = []
        for i, (name, cents) in enumerate(change.totals.items()):
            names[f"#t{i}"], values[f":t{i}"] = name, to_value(cents)
            adds.append(f"#t{i} :t{i}")
        lists = [
            (OPEN_INVOICES, change.opened, sets),
            (OPEN_INVOICES, change.closed, removes),
            (CREDIT_PAYMENTS, change.credit_added, sets),
            (CREDIT_PAYMENTS, change.credit_removed, removes),
        ]
        for n, (attribute, object_ids, clause) in enumerate(lists):
            for j, object_id in enumerate(sorted(object_ids)):
                names[f"#l{n}"], names[f"#e{n}_{j}"] = attribute, object_id
                clause.append(f"#l{n}.#e{n}_{j}" + (" = :yes" if clause is sets else ""))
        if sets:
            values[":yes"] = {"BOOL": True}
        clauses = [("ADD", adds), ("SET", sets), ("REMOVE", removes)]
        update: dict[str, Any] = {
            "TableName": self._table,
            "Key": to_attributes(keys.key(practice_id, keys.client_sk(client_id))),
            "UpdateExpression": " ".join(f"{verb} {', '.join(parts)}" for verb, parts in clauses if parts),
            "ConditionExpression": "attribute_exists(PK)",
            "ExpressionAttributeNames": names,
        }
        if values:
            update["ExpressionAttributeValues"] = values
        return {"Update": update}

    def commit(self, unit: UnitOfWork) -> None:
        """Commit a unit of work as one transaction (all or nothing); StaleState when a condition failed.

        Refuses a unit over DynamoDB's 100-item limit before sending it (moto would accept it; AWS would not)."""
        pid = unit.practice_id
        actions = [self._new_put(self._item_of(pid, record)) for record in unit.created]
        actions += [self._versioned_put(self._item_of(pid, record), record.version) for record in unit.changed]
        if unit.invoice_sequence is not None:
            previous, following = unit.invoice_sequence
            actions.append(
                {
                    "Update": {
                        "TableName": self._table,
                        "Key": to_attributes(keys.key(pid, keys.PRACTICE_SK)),
                        "UpdateExpression": "SET #seq = :next",
                        "ConditionExpression": "#seq = :previous",
                        "ExpressionAttributeNames": {"#seq": "last_invoice_sequence"},
                        "ExpressionAttributeValues": {":next": to_value(following), ":previous": to_value(previous)},
                    }
                }
            )
        actions += [
            self._account_update(pid, client_id, change)
            for client_id, change in unit.accounts.items()
            if not change.empty
        ]
        if len(actions) > MAX_ITEMS:
            raise ValueError(f"a unit of work of {len(actions)} items exceeds DynamoDB's {MAX_ITEMS}-item transaction")
        if actions:
            self._transact(actions)

    def _transact(self, actions: list[dict[str, Any]]) -> None:
        try:
            self._db.transact_write_items(TransactItems=actions)
        except ClientError as error:
            if is_condition_failure(error):
                raise StaleState("the data changed while the request was being handled; retry") from error
            raise

    # -- consistent reads by id -----------------------------------------------------------------------
    def _batch_get(self, practice_id: str, sort_keys: list[str]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        wanted = list(dict.fromkeys(sort_keys))  # nothing wanted: no call at all
        for start in range(0, len(wanted), 100):
            request: dict[str, Any] = {
                self._table: {
                    "Keys": [to_attributes(keys.key(practice_id, sk)) for sk in wanted[start : start + 100]],
                    "ConsistentRead": True,
                }
            }
            while request:
                response = self._db.batch_get_item(RequestItems=request)
                found += [_domain_fields(i) for i in response["Responses"].get(self._table, [])]
                request = response.get("UnprocessedKeys") or {}
        return found

    def invoices_by_id(self, practice_id: str, invoice_ids: list[str]) -> list[Invoice]:
        return [
            Invoice.model_validate(i) for i in self._batch_get(practice_id, [keys.invoice_sk(i) for i in invoice_ids])
        ]

    def payments_by_id(self, practice_id: str, payment_ids: list[str]) -> list[Payment]:
        return [
            Payment.model_validate(i) for i in self._batch_get(practice_id, [keys.payment_sk(i) for i in payment_ids])
        ]

    def client_ledger(self, practice_id: str, client_id: str) -> ClientLedger | None:
        found = self._get(practice_id, keys.client_sk(client_id))
        if found is None:
            return None
        return ClientLedger(
            client=Client.model_validate(found),
            account=Account(**{name: found.get(name, 0) for name in ACCOUNT_FIELDS}),
            open_invoice_ids=sorted(found.get(OPEN_INVOICES) or {}),
            credit_payment_ids=sorted(found.get(CREDIT_PAYMENTS) or {}),
            card_ids=sorted(found.get(CARDS) or {}),
        )

    def open_invoice_ids(self, practice_id: str, client_id: str) -> list[str]:
        ledger = self.client_ledger(practice_id, client_id)
        return ledger.open_invoice_ids if ledger else []

    def credit_payment_ids(self, practice_id: str, client_id: str) -> list[str]:
        ledger = self.client_ledger(practice_id, client_id)
        return ledger.credit_payment_ids if ledger else []

    def get_idempotency_record(self, practice_id: str, key_digest: str) -> IdempotencyRecord | None:
        found = self._get(practice_id, keys.idempotency_sk(key_digest))
        return IdempotencyRecord.model_validate(found) if found else None

    def get_refund_link(self, practice_id: str, processor_refund_id: str) -> ProcessorRefundLink | None:
        found = self._get(practice_id, keys.refund_link_sk(processor_refund_id))
        return ProcessorRefundLink.model_validate(found) if found else None

    # -- cards -------------------------------------------------------------------------------------
    def cards_of(self, practice_id: str, client_id: str) -> list[Card]:
        """The client's cards, oldest first, read consistently (a card added a moment ago is there)."""
        ledger = self.client_ledger(practice_id, client_id)
        return self.cards_by_id(practice_id, ledger.card_ids) if ledger else []

    def cards_by_id(self, practice_id: str, card_ids: list[str]) -> list[Card]:
        cards = [
            Card.model_validate(item) for item in self._batch_get(practice_id, [keys.card_sk(i) for i in card_ids])
        ]
        return sorted(cards, key=lambda card: (card.created_at, card.card_id))

    def set_processor_customer(self, practice_id: str, client_id: str, customer_id: str) -> None:
        self._db.update_item(
            TableName=self._table,
            Key=to_attributes(keys.key(practice_id, keys.client_sk(client_id))),
            UpdateExpression="SET processor_customer_id = if_not_exists(processor_customer_id, :customer)",
            ConditionExpression="attribute_exists(PK)",
            ExpressionAttributeValues={":customer": to_value(customer_id)},
        )

    def _card_entry(self, practice_id: str, card: Card, present: bool) -> dict[str, Any]:
        """Add or take the card from the client's ``cards`` map (the consistent list of its cards)."""
        return {
            "Update": {
                "TableName": self._table,
                "Key": to_attributes(keys.key(practice_id, keys.client_sk(card.client_id))),
                "UpdateExpression": "SET #cards.#card = :yes" if present else "REMOVE #cards.#card",
                "ConditionExpression": "attribute_exists(PK)",
                "ExpressionAttributeNames": {"#cards": CARDS, "#card": card.card_id},
                **({"ExpressionAttributeValues": {":yes": {"BOOL": True}}} if present else {}),
            }
        }

    def add_card(self, practice_id: str, card: Card) -> None:
        values = record_attributes(card) | keys.key(practice_id, keys.card_sk(card.card_id))
        values |= {
            "kind": "card",
            "GSI2PK": keys.client_gsi2pk(practice_id, card.client_id),
            "GSI2SK": keys.timeline_gsi2sk(keys.CARD_GSI2_PREFIX, values["created_at"], card.card_id),
        }
        self._transact([self._new_put(values), self._card_entry(practice_id, card, present=True)])

    def remove_card(self, practice_id: str, card: Card, new_default: Card | None) -> None:
        actions: list[dict[str, Any]] = [
            {
                "Delete": {
                    "TableName": self._table,
                    "Key": to_attributes(keys.key(practice_id, keys.card_sk(card.card_id))),
                    "ConditionExpression": "attribute_exists(PK)",
                }
            },
            self._card_entry(practice_id, card, present=False),
        ]
        if new_default is not None:
            actions.append(
                {
                    "Update": {
                        "TableName": self._table,
                        "Key": to_attributes(keys.key(practice_id, keys.card_sk(new_default.card_id))),
                        "UpdateExpression": "SET is_default = :yes",
                        "ConditionExpression": "attribute_exists(PK)",
                        "ExpressionAttributeValues": {":yes": {"BOOL": True}},
                    }
                }
            )
        self._transact(actions)
