"""The billing single table behind the domain's store interfaces. Query and GetItem only; never Scan."""

from collections.abc import Iterator
from datetime import date
from typing import Any

from botocore.exceptions import ClientError

from billing.accounts import Account
from billing.calendar import Appointment, AppointmentStatus
from billing.clients import Client
from billing.errors import Conflict
from billing.practices import Practice
from billing_aws import keys
from billing_aws.codec import from_attributes, model_attributes, to_attributes, to_value

# Attributes that are storage bookkeeping, not part of any domain object.
_KEY_ATTRIBUTES = frozenset({"PK", "SK", "GSI1PK", "GSI1SK", "GSI2PK", "GSI2SK", "GSI3PK", "GSI3SK", "kind"})
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
            ExpressionAttributeNames=names | {"#counter": "invoice_counter"},
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
        values |= {"kind": "client", "account_version": 0} | {name: 0 for name in ACCOUNT_FIELDS}
        self._db.put_item(
            TableName=self._table, Item=to_attributes(values), ConditionExpression="attribute_not_exists(PK)"
        )

    def get_account(self, practice_id: str, client_id: str) -> Account:
        found = self._get(practice_id, keys.client_sk(client_id)) or {}
        return Account(**{name: found.get(name, 0) for name in ACCOUNT_FIELDS}, version=found.get("account_version", 0))

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
        try:
            self._db.put_item(
                TableName=self._table,
                Item=to_attributes(self.appointment_item(practice_id, appointment)),
                ConditionExpression="#version = :expected",
                ExpressionAttributeNames={"#version": "version"},
                ExpressionAttributeValues={":expected": to_value(expected_version)},
            )
        except ClientError as error:
            if is_condition_failure(error):
                raise Conflict(
                    f"appointment {appointment.appointment_id} changed meanwhile; reload and retry",
                    code="concurrent_change",
                ) from error
            raise

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
