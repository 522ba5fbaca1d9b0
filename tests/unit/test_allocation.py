"""Where money goes: credit taken oldest first, allocation to named or oldest invoices, refunds unwinding."""

from datetime import UTC, date, datetime, timedelta

import pytest

from billing.allocation import Refund, RefundStatus, allocate, check_payable, plan_refund
from billing.errors import Conflict
from billing.invoices import Invoice, InvoiceLine, InvoiceStatus
from billing.payments import Payment, PaymentMethod, PaymentStatus, idempotent_id, take_credit

NOW = datetime(2026, 11, 27, 15, tzinfo=UTC)


def _invoice(sequence: int, total: int, issued: date = date(2026, 11, 1)) -> Invoice:
    return Invoice(
        invoice_id=f"inv_{sequence}",
        sequence=sequence,
        client_id="cli_1",
        currency="usd",
        issue_date=issued + timedelta(days=sequence),
        due_date=issued + timedelta(days=sequence + 14),
        lines=[
            InvoiceLine(
                appointment_id=f"apt_{sequence}", date=issued, service_code="90837", description="x", amount_cents=total
            )
        ],
        total_cents=total,
        created_at=NOW,
    )


def _payment(payment_id: str, amount: int, unallocated: int = 0, minutes: int = 0) -> Payment:
    return Payment(
        payment_id=payment_id,
        client_id="cli_1",
        amount_cents=amount,
        currency="usd",
        method=PaymentMethod.CASH,
        status=PaymentStatus.PENDING if not unallocated else PaymentStatus.SUCCEEDED,
        unallocated_cents=unallocated,
        created_at=NOW + timedelta(minutes=minutes),
    )


def _refund(amount: int) -> Refund:
    return Refund(
        refund_id="re_1",
        payment_id="pay_1",
        client_id="cli_1",
        amount_cents=amount,
        status=RefundStatus.PENDING,
        created_at=NOW,
    )


def test_a_payment_pays_the_oldest_invoices_first_and_keeps_the_rest_as_credit() -> None:
    older, newer = _invoice(1, 5000), _invoice(2, 3000)
    settled = allocate("p", _payment("pay_1", 9000), [newer, older], None)
    assert [(a.invoice_id, a.amount_cents) for a in settled.payment.allocations] == [("inv_1", 5000), ("inv_2", 3000)]
    assert settled.payment.unallocated_cents == 1000 and settled.payment.status is PaymentStatus.SUCCEEDED
    assert [i.status for i in settled.invoices] == [InvoiceStatus.PAID, InvoiceStatus.PAID]


def test_a_payment_pays_the_named_invoice_only() -> None:
    older, newer = _invoice(1, 5000), _invoice(2, 3000)
    settled = allocate("p", _payment("pay_1", 2000), [older, newer], ["inv_2"])
    assert [(a.invoice_id, a.amount_cents) for a in settled.payment.allocations] == [("inv_2", 2000)]
    assert settled.invoices[0].status is InvoiceStatus.PARTIALLY_PAID


def test_naming_an_invoice_that_is_not_open_is_refused_before_any_money_is_taken() -> None:
    with pytest.raises(Conflict):
        check_payable([_invoice(1, 5000)], ["inv_9"])


def test_money_taken_for_an_invoice_paid_meanwhile_becomes_credit() -> None:
    settled = allocate("p", _payment("pay_1", 2000), [_invoice(1, 5000)], ["inv_9"])
    assert settled.payment.allocations == [] and settled.payment.unallocated_cents == 2000


def test_credit_is_taken_from_the_oldest_payment_first() -> None:
    newer, older = _payment("pay_new", 4000, 4000, minutes=5), _payment("pay_old", 1000, 1000)
    uses = take_credit([newer, older], "inv_1", 3000)
    assert [(u.payment.payment_id, u.amount_cents) for u in uses] == [("pay_old", 1000), ("pay_new", 2000)]
    assert uses[1].payment.unallocated_cents == 2000


def test_a_refund_takes_credit_first_then_unpays_the_newest_invoice() -> None:
    first, second = _invoice(1, 5000), _invoice(2, 3000)
    settled = allocate("p", _payment("pay_1", 9000), [first, second], None)
    refund = _refund(2500)
    plan = plan_refund("p", refund, settled.payment, settled.invoices)
    assert plan.from_credit_cents == 1000
    assert [(i.invoice_id, i.balance_cents) for i in plan.invoices] == [("inv_2", 1500)]
    assert plan.payment.refunded_cents == 2500 and plan.payment.unallocated_cents == 0


def test_never_refund_more_than_is_refundable() -> None:
    settled = allocate("p", _payment("pay_1", 1000), [], None)
    refund = _refund(1001)
    with pytest.raises(Conflict, match="exceeds"):
        plan_refund("p", refund, settled.payment, [])


def test_idempotent_ids_are_deterministic_per_practice_and_carry_no_input() -> None:
    first = idempotent_id("pay", "prac_1", "Jane Doe 1980-01-01")
    assert first == idempotent_id("pay", "prac_1", "Jane Doe 1980-01-01")
    assert first != idempotent_id("pay", "prac_2", "Jane Doe 1980-01-01")
    assert "Jane" not in first and "1980" not in first
