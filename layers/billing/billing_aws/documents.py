"""Reads the billing documents and finance exports need, beside the store (consistent reads decide content).

A client's invoices, payments and refunds come from its timeline (GSI2) and are read again by id
(BatchGetItem, consistent); a practice's ledger for finance exports is a consistent Query of its own
partition by sort-key prefix (``INVOICE#``, ``PAYMENT#``, ``REFUND#``). No Scan.
"""

from collections.abc import Iterable

from billing.calendar import Appointment
from billing.invoices import Invoice
from billing.payments import Payment, Refund
from billing_aws import keys
from billing_aws.codec import to_value
from billing_aws.store import BillingStore


class DocumentStore(BillingStore):
    """The billing store plus the listings documents and exports are assembled from."""

    def refunds_by_id(self, practice_id: str, refund_ids: Iterable[str]) -> list[Refund]:
        return [Refund.model_validate(i) for i in self._batch_get(practice_id, [keys.refund_sk(r) for r in refund_ids])]

    def client_history(self, practice_id: str, client_id: str) -> tuple[list[Invoice], list[Payment], list[Refund]]:
        """All of a client's invoices, payments and refunds, listed from the timeline and read again by id."""
        # The client item's maps are consistent: an invoice still open or a payment holding credit written a
        # moment ago is included even if the index has not caught up yet.
        ledger = self.client_ledger(practice_id, client_id)
        invoice_ids = [i.invoice_id for i in self.invoices_of(practice_id, client_id)]
        invoice_ids += ledger.open_invoice_ids if ledger else []
        payment_ids = [p.payment_id for p in self.payments_of(practice_id, client_id)]
        payment_ids += ledger.credit_payment_ids if ledger else []
        refund_ids = [r.refund_id for r in self.refunds_of(practice_id, client_id)]
        return (
            self.invoices_by_id(practice_id, invoice_ids),
            self.payments_by_id(practice_id, payment_ids),
            self.refunds_by_id(practice_id, refund_ids),
        )

    def _partition(self, practice_id: str, prefix: str) -> list[dict[str, object]]:
        return list(
            self._query(
                KeyConditionExpression="PK = :pk AND begins_with(SK, :prefix)",
                ExpressionAttributeValues={
                    ":pk": to_value(keys.practice_pk(practice_id)),
                    ":prefix": to_value(prefix),
                },
                ConsistentRead=True,
            )
        )

    def practice_invoices(self, practice_id: str) -> list[Invoice]:
        """Every invoice of the practice (finance exports filter them by issue date)."""
        return [Invoice.model_validate(i) for i in self._partition(practice_id, keys.invoice_sk(""))]

    def practice_payments(self, practice_id: str) -> list[Payment]:
        return [Payment.model_validate(i) for i in self._partition(practice_id, keys.payment_sk(""))]

    def appointments_of_invoices(self, practice_id: str, invoices: list[Invoice]) -> list[Appointment]:
        return self.appointments_by_id(practice_id, [line.appointment_id for i in invoices for line in i.lines])
