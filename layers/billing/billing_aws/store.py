"""The billing single table behind the domain's store interfaces. Query and GetItem only; never Scan."""

from collections.abc import Iterator
from datetime import date
from typing import Any

from botocore.exceptions import ClientError

from billing.accounts import Account
from billing.allocation import Refund, RefundedPayment, SettledPayment
from billing.calendar import Appointment, AppointmentStatus
from billing.cards import Card
from billing.clients import Client
from billing.errors import StaleState
from billing.invoices import Invoice, NewInvoice, VoidedInvoice
from billing.payments import Payment, PaymentStatus
from billing.practices import Practice
from billing_aws import keys
from billing_aws.codec import from_attributes, model_attributes, to_attributes, to_value

# Attributes that are storage bookkeeping, not part of any domain object.
_KEY_ATTRIBUTES = frozenset({"PK", "SK", "GSI1PK", "GSI1SK", "GSI2PK", "GSI2SK", "GSI3PK", "GSI3SK", "kind"})
_PAYMENT_PRIVATE_FIELDS = ("fingerprint", "requested_invoice_ids", "processor_customer_id", "payment_method_id")
ACCOUNT_FIELDS = ("invoiced_cents", "paid_cents", "refunded_cents", "unallocated_credit_cents")


def _domain_fields(item: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in from_attributes(item).items() if name not in _KEY_ATTRIBUTES}


def is_condition_failure(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in {
        "ConditionalCheckFailedException",
        "TransactionCanceledException",
    }


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
        values = model_attributes(practice) | {
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
        values = model_attributes(client) | keys.key(practice_id, keys.client_sk(client.client_id))
        values |= {"kind": "client"} | {name: 0 for name in ACCOUNT_FIELDS}
        self._db.put_item(
            TableName=self._table, Item=to_attributes(values), ConditionExpression="attribute_not_exists(PK)"
        )

    def get_account(self, practice_id: str, client_id: str) -> Account:
        found = self._get(practice_id, keys.client_sk(client_id)) or {}
        return Account(**{name: found.get(name, 0) for name in ACCOUNT_FIELDS})

    # -- appointments ------------------------------------------------------------------------------
    @staticmethod
    def appointment_item(practice_id: str, appointment: Appointment) -> dict[str, Any]:
        """The stored form of an appointment, with the index keys its state calls for."""
        values = model_attributes(appointment) | keys.key(practice_id, keys.appointment_sk(appointment.appointment_id))
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
        found: list[Appointment] = []
        wanted = list(dict.fromkeys(appointment_ids))
        for start in range(0, len(wanted), 100):
            request = {
                self._table: {
                    "Keys": [
                        to_attributes(keys.key(practice_id, keys.appointment_sk(i)))
                        for i in wanted[start : start + 100]
                    ],
                    "ConsistentRead": True,
                }
            }
            while request:
                response = self._db.batch_get_item(RequestItems=request)
                found += [
                    Appointment.model_validate(_domain_fields(i)) for i in response["Responses"].get(self._table, [])
                ]
                request = response.get("UnprocessedKeys") or {}
        return found

    # -- invoices ----------------------------------------------------------------------------------
    @staticmethod
    def invoice_item(practice_id: str, invoice: Invoice) -> dict[str, Any]:
        values = invoice.model_dump(
            mode="json", exclude={"status", "past_due", "number", "paid_cents", "balance_cents"}
        )
        values |= {"sequence": invoice.sequence, "voided": invoice.voided}
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
        values = model_attributes(payment) | keys.key(practice_id, keys.payment_sk(payment.payment_id))
        values |= {name: getattr(payment, name) for name in _PAYMENT_PRIVATE_FIELDS}
        values |= {
            "kind": "payment",
            "GSI2PK": keys.client_gsi2pk(practice_id, payment.client_id),
            "GSI2SK": keys.payment_gsi2sk(values["created_at"], payment.payment_id),
        }
        # Only payments with money not yet applied to an invoice sit in the sparse credit index.
        if payment.status is PaymentStatus.SUCCEEDED and payment.unallocated_cents > 0:
            values["GSI3PK"] = keys.credit_gsi3pk(practice_id)
            values["GSI3SK"] = f"{values['created_at']}#{payment.payment_id}"
        return values

    def get_payment(self, practice_id: str, payment_id: str) -> Payment | None:
        found = self._get(practice_id, keys.payment_sk(payment_id))
        return Payment.model_validate(found) if found else None

    def open_credit(self, practice_id: str, client_id: str | None = None) -> list[Payment]:
        """Payments with unallocated money (the clients' credit), oldest first."""
        query: dict[str, Any] = {
            "IndexName": "GSI3",
            "KeyConditionExpression": "GSI3PK = :pk",
            "ExpressionAttributeValues": {":pk": to_value(keys.credit_gsi3pk(practice_id))},
        }
        if client_id is not None:
            query["FilterExpression"] = "client_id = :client"
            query["ExpressionAttributeValues"][":client"] = to_value(client_id)
        return [Payment.model_validate(found) for found in self._query(**query)]

    # -- units of work -----------------------------------------------------------------------------
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

    def _account_change(self, practice_id: str, client_id: str, **deltas: int) -> dict[str, Any]:
        names = {f"#d{i}": name for i, name in enumerate(deltas)}
        values = {f":d{i}": to_value(delta) for i, delta in enumerate(deltas.values())}
        return {
            "Update": {
                "TableName": self._table,
                "Key": to_attributes(keys.key(practice_id, keys.client_sk(client_id))),
                "UpdateExpression": "ADD " + ", ".join(f"#d{i} :d{i}" for i in range(len(deltas))),
                "ConditionExpression": "attribute_exists(PK)",
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
            }
        }

    def _transact(self, actions: list[dict[str, Any]]) -> None:
        try:
            self._db.transact_write_items(TransactItems=actions)
        except ClientError as error:
            if is_condition_failure(error):
                raise StaleState("the data changed while the request was being handled; retry") from error
            raise

    def commit_new_invoice(self, plan: NewInvoice) -> None:
        """Issue the invoice, take its number and appointments, move the account and credit: all or nothing."""
        pid = plan.practice_id
        invoice = plan.invoice
        actions: list[dict[str, Any]] = [
            {
                "Put": {
                    "TableName": self._table,
                    "Item": to_attributes(self.invoice_item(pid, invoice)),
                    "ConditionExpression": "attribute_not_exists(PK)",
                }
            },
            {
                "Update": {
                    "TableName": self._table,
                    "Key": to_attributes(keys.key(pid, keys.PRACTICE_SK)),
                    "UpdateExpression": "SET #seq = :next",
                    "ConditionExpression": "#seq = :previous",
                    "ExpressionAttributeNames": {"#seq": "last_invoice_sequence"},
                    "ExpressionAttributeValues": {
                        ":next": to_value(invoice.sequence),
                        ":previous": to_value(plan.previous_sequence),
                    },
                }
            },
        ]
        actions += [self._versioned_put(self.appointment_item(pid, a), a.version) for a in plan.appointments]
        actions += [self._versioned_put(self.payment_item(pid, u.payment), u.payment.version) for u in plan.credit]
        actions.append(
            self._account_change(
                pid,
                invoice.client_id,
                invoiced_cents=invoice.total_cents,
                unallocated_credit_cents=-invoice.paid_cents,
            )
        )
        self._transact(actions)

    def commit_void(self, plan: VoidedInvoice) -> None:
        """Void the invoice, free its appointments and return its allocations to their payments as credit."""
        pid = plan.practice_id
        actions = [self._versioned_put(self.invoice_item(pid, plan.after), plan.after.version)]
        actions += [self._versioned_put(self.appointment_item(pid, a), a.version) for a in plan.appointments]
        actions += [self._versioned_put(self.payment_item(pid, p), p.version) for p in plan.payments]
        actions.append(
            self._account_change(
                pid,
                plan.before.client_id,
                invoiced_cents=-plan.before.total_cents,
                unallocated_credit_cents=plan.before.paid_cents,
            )
        )
        self._transact(actions)

    # -- payments: exactly-once steps ---------------------------------------------------------------
    def _put_new(self, item: dict[str, Any]) -> bool:
        """Write an item under a key nobody has used yet; False if the key is taken (a retry or a race)."""
        try:
            self._db.put_item(
                TableName=self._table, Item=to_attributes(item), ConditionExpression="attribute_not_exists(PK)"
            )
            return True
        except ClientError as error:
            if is_condition_failure(error):
                return False
            raise

    def start_payment(self, practice_id: str, payment: Payment) -> bool:
        """Record a pending payment under its idempotent id; False if that id is already taken."""
        return self._put_new(self.payment_item(practice_id, payment))

    def save_payment(self, practice_id: str, payment: Payment) -> None:
        """Write a payment whose money did not move (e.g. a decline), if nobody changed it meanwhile."""
        self._transact([self._versioned_put(self.payment_item(practice_id, payment), payment.version)])

    def commit_settlement(self, plan: SettledPayment) -> None:
        """The payment succeeded: record it, its allocations, the invoices and the client's totals at once."""
        pid = plan.practice_id
        payment = plan.payment
        actions = [self._versioned_put(self.payment_item(pid, payment), payment.version)]
        actions += [self._versioned_put(self.invoice_item(pid, i), i.version) for i in plan.invoices]
        actions.append(
            self._account_change(
                pid,
                payment.client_id,
                paid_cents=payment.amount_cents,
                unallocated_credit_cents=payment.unallocated_cents,
            )
        )
        self._transact(actions)

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
    def refund_item(self, practice_id: str, refund: Refund) -> dict[str, Any]:
        values = model_attributes(refund) | keys.key(practice_id, keys.refund_sk(refund.refund_id))
        return values | {
            "kind": "refund",
            "GSI2PK": keys.client_gsi2pk(practice_id, refund.client_id),
            "GSI2SK": keys.timeline_gsi2sk(keys.REFUND_GSI2_PREFIX, values["created_at"], refund.refund_id),
        }

    def get_refund(self, practice_id: str, refund_id: str) -> Refund | None:
        found = self._get(practice_id, keys.refund_sk(refund_id))
        return Refund.model_validate(found) if found else None

    def start_refund(self, practice_id: str, refund: Refund) -> bool:
        """Record a pending refund under its id before the processor is asked; False if already there."""
        return self._put_new(self.refund_item(practice_id, refund))

    def commit_refund(self, plan: RefundedPayment) -> None:
        """Record the refund, the payment's and invoices' new allocations and the client's totals at once."""
        pid = plan.practice_id
        actions = [
            self._versioned_put(self.refund_item(pid, plan.refund), plan.refund.version),
            self._versioned_put(self.payment_item(pid, plan.payment), plan.payment.version),
        ]
        actions += [self._versioned_put(self.invoice_item(pid, i), i.version) for i in plan.invoices]
        actions.append(
            self._account_change(
                pid,
                plan.payment.client_id,
                refunded_cents=plan.refund.amount_cents,
                unallocated_credit_cents=-plan.from_credit_cents,
            )
        )
        self._transact(actions)

    # -- cards -------------------------------------------------------------------------------------
    def cards_of(self, practice_id: str, client_id: str) -> list[Card]:
        return [Card.model_validate(found) for found in self._timeline(practice_id, client_id, keys.CARD_GSI2_PREFIX)]

    def set_processor_customer(self, practice_id: str, client_id: str, customer_id: str) -> None:
        self._db.update_item(
            TableName=self._table,
            Key=to_attributes(keys.key(practice_id, keys.client_sk(client_id))),
            UpdateExpression="SET processor_customer_id = if_not_exists(processor_customer_id, :customer)",
            ConditionExpression="attribute_exists(PK)",
            ExpressionAttributeValues={":customer": to_value(customer_id)},
        )

    def add_card(self, practice_id: str, card: Card) -> None:
        values = model_attributes(card) | keys.key(practice_id, keys.card_sk(card.card_id))
        values |= {
            "kind": "card",
            "GSI2PK": keys.client_gsi2pk(practice_id, card.client_id),
            "GSI2SK": keys.timeline_gsi2sk(keys.CARD_GSI2_PREFIX, values["created_at"], card.card_id),
        }
        self._db.put_item(
            TableName=self._table, Item=to_attributes(values), ConditionExpression="attribute_not_exists(PK)"
        )

    def remove_card(self, practice_id: str, card: Card, new_default: Card | None) -> None:
        actions: list[dict[str, Any]] = [
            {
                "Delete": {
                    "TableName": self._table,
                    "Key": to_attributes(keys.key(practice_id, keys.card_sk(card.card_id))),
                    "ConditionExpression": "attribute_exists(PK)",
                }
            }
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
