"""Publishing a document: read what it shows consistently, render it unless that version is already stored,
and hand out a short-lived link. The caller has already checked who may see it (tenant and client)."""

from dataclasses import dataclass
from datetime import date

from billing import documents
from billing.clients import Client, require_client
from billing.documents import (
    DateRange,
    Document,
    DocumentLink,
    DocumentType,
    ExportLink,
    StatementDocument,
    StatementLink,
    SuperbillDocument,
)
from billing.errors import Conflict, existing
from billing.invoices import Invoice
from billing.localtime import Clock, local_date
from billing.payments import Payment, PaymentStatus, Refund
from billing.practices import Practice
from billing_aws.archive import PDF, DocumentArchive, document_key
from billing_aws.documents import DocumentStore
from billing_lambda.observability import logger, metrics


@dataclass
class Publisher:
    store: DocumentStore
    archive: DocumentArchive
    clock: Clock
    practice: Practice

    @property
    def today(self) -> date:
        return local_date(self.clock.now(), self.practice.timezone)

    def _publish(self, kind: str, object_id: str, docs: list[Document]) -> DocumentLink:
        """The PDF of ``docs`` under a key made of ids and the documents' versions; rendered only if new."""
        version = docs[0].version_token if len(docs) == 1 else documents.series_version(docs)
        key = document_key(self.practice.practice_id, kind, object_id, version)
        if not self.archive.exists(key):
            # WeasyPrint loads with the first document this container renders (about 0.6 s), not in every cold start:
            # a link to a version rendered before needs none of it.
            from rendering import render_pdf

            self.archive.put(key, render_pdf(docs, self.practice.paper_size.value), PDF)
            metrics.add_metric(name="DocumentsRendered", unit="Count", value=1)
            logger.info("document rendered", extra={"kind": kind, "object_id": object_id, "pages_of": len(docs)})
        url, expires_at = self.archive.link(key, self.clock.now(), f"{kind}-{object_id}.pdf")
        return DocumentLink(url=url, expires_at=expires_at)

    def _client(self, client_id: str) -> Client:
        return require_client(self.store, self.practice.practice_id, client_id)

    # -- one document ------------------------------------------------------------------------------
    def invoice(self, invoice_id: str, client_id: str | None = None) -> DocumentLink:
        """``client_id``: the portal caller, who sees only their own invoices (another's is 404)."""
        invoice = self._invoice(invoice_id, client_id)
        doc = documents.invoice_document(self.practice, self._client(invoice.client_id), invoice, self.today)
        return self._publish("invoice", invoice_id, [doc])

    def _invoice(self, invoice_id: str, client_id: str | None) -> Invoice:
        found = self.store.get_invoice(self.practice.practice_id, invoice_id)
        return existing(found if found and client_id in (None, found.client_id) else None, "invoice", invoice_id)

    def receipt(self, payment_id: str, client_id: str | None = None) -> DocumentLink:
        found = self.store.get_payment(self.practice.practice_id, payment_id)
        payment = existing(found if found and client_id in (None, found.client_id) else None, "payment", payment_id)
        return self._publish("receipt", payment_id, [self._receipt(payment)])

    def _receipt(
        self, payment: Payment, invoices: list[Invoice] | None = None, refunds: list[Refund] | None = None
    ) -> documents.ReceiptDocument:
        """The payment's receipt; a series passes the client's invoices and refunds it has already read."""
        pid = self.practice.practice_id
        if invoices is None:
            invoices = self.store.invoices_by_id(pid, [a.invoice_id for a in payment.allocations])
        if refunds is None:
            listed = self.store.refunds_of(pid, payment.client_id)
            refunds = self.store.refunds_by_id(pid, [r.refund_id for r in listed if r.payment_id == payment.payment_id])
        card = next((c for c in self.store.cards_of(pid, payment.client_id) if c.card_id == payment.card_id), None)
        client = self._client(payment.client_id)
        return documents.receipt_document(self.practice, client, payment, invoices, card, refunds)

    def statement(self, client_id: str, period: DateRange) -> StatementLink:
        doc = self._statement(self._client(client_id), period)
        link = self._publish("statement", client_id, [doc])
        return StatementLink(
            **link.model_dump(),
            opening_balance_cents=doc.opening_balance_cents,
            closing_balance_cents=doc.closing_balance_cents,
        )

    def _statement(self, client: Client, period: DateRange) -> StatementDocument:
        invoices, payments, refunds = self.store.client_history(self.practice.practice_id, client.client_id)
        return documents.statement_document(self.practice, client, period, self.today, invoices, payments, refunds)

    def superbill(self, client_id: str, period: DateRange) -> DocumentLink:
        return self._publish("superbill", client_id, [self._superbill(self._client(client_id), period)])

    def _superbill(self, client: Client, period: DateRange) -> SuperbillDocument:
        documents.require_superbill_details(self.practice, client)  # 409 before any read it would waste
        invoices, _, _ = self.store.client_history(self.practice.practice_id, client.client_id)
        in_range = [i for i in invoices if not i.voided and any(period.covers(line.date) for line in i.lines)]
        appointments = self.store.appointments_of_invoices(self.practice.practice_id, in_range)
        return documents.superbill_document(self.practice, client, period, self.today, in_range, appointments)

    # -- a series ----------------------------------------------------------------------------------
    def series(self, client_id: str, period: DateRange, types: list[DocumentType]) -> ExportLink:
        """The chosen documents of the client in ``period``, in date order, as one PDF rendered in one pass."""
        client = self._client(client_id)
        invoices, payments, refunds = self.store.client_history(self.practice.practice_id, client_id)
        docs: list[Document] = []
        if DocumentType.INVOICE in types:
            docs += [
                documents.invoice_document(self.practice, client, i, self.today)
                for i in invoices
                if period.covers(i.issue_date)
            ]
        if DocumentType.RECEIPT in types:
            docs += [
                self._receipt(p, invoices, refunds)
                for p in payments
                if p.status is PaymentStatus.SUCCEEDED
                and period.covers(local_date(p.created_at, self.practice.timezone))
            ]
        if DocumentType.STATEMENT in types:
            docs.append(
                documents.statement_document(self.practice, client, period, self.today, invoices, payments, refunds)
            )
        if DocumentType.SUPERBILL in types:
            docs.append(self._superbill(client, period))
        ordered = documents.in_date_order(docs)
        if not ordered:
            raise Conflict("there are no such documents in that range", code="no_documents")
        link = self._publish("series", client_id, ordered)
        return ExportLink(**link.model_dump(), documents=len(ordered))
