"""Where money goes: claims before a charge, credit taken oldest first, refunds unwinding, and the account
totals a unit of work derives from the objects' transitions."""

from datetime import UTC, date, datetime, timedelta

import pytest

from billing.allocation import check_refundable, payable_invoices, plan_claims, plan_refund_takes
from billing.errors import Conflict
from billing.invoices import Invoice, InvoiceLine, InvoiceStatus
from billing.payments import Payment, PaymentAllocation, PaymentMethod, PaymentStatus, idempotent_id, take_credit
from billing.unit_of_work import UnitOfWork

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


def test_a_payment_claims_the_oldest_invoices_first_and_the_rest_is_prepaid_credit() -> None:
    older, newer = _invoice(1, 5000), _invoice(2, 3000)
    claims = plan_claims(9000, payable_invoices([newer, older], None), named=False)
    assert [(c.invoice_id, c.amount_cents) for c in claims] == [("inv_1", 5000), ("inv_2", 3000)]


def test_a_payment_claims_only_the_named_invoice() -> None:
    older, newer = _invoice(1, 5000), _invoice(2, 3000)
    claims = plan_claims(2000, payable_invoices([older, newer], ["inv_2"]), named=True)
    assert [(c.invoice_id, c.amount_cents) for c in claims] == [("inv_2", 2000)]


def test_naming_an_invoice_that_is_not_open_is_refused_before_any_money_is_taken() -> None:
    with pytest.raises(Conflict) as refused:
        payable_invoices([_invoice(1, 5000)], ["inv_9"])
    assert refused.value.code == "invoice_not_open"


def test_what_an_in_flight_payment_holds_cannot_be_claimed_again() -> None:
    held = _invoice(1, 15000).with_hold("pay_first", 15000)
    assert (held.balance_cents, held.available_cents) == (15000, 0)
    with pytest.raises(Conflict) as named:
        plan_claims(15000, [held], named=True)
    assert named.value.code == "payment_in_progress"
    # Unnamed: the amount would only be left over because another payment is in flight, so it is refused too.
    with pytest.raises(Conflict):
        plan_claims(15000, [held], named=False)


def test_a_partly_held_invoice_lends_what_is_left_and_a_released_hold_frees_it() -> None:
    held = _invoice(1, 10000).with_hold("pay_first", 6000)
    assert [c.amount_cents for c in plan_claims(4000, [held], named=True)] == [4000]
    with pytest.raises(Conflict):
        plan_claims(5000, [held], named=True)
    released = held.with_hold_released("pay_first")
    assert released.available_cents == 10000 and released.version == held.version + 1


def test_a_settled_hold_becomes_the_payments_allocation() -> None:
    settled = _invoice(1, 10000).with_hold("pay_first", 6000).with_hold_settled("pay_first")
    assert (settled.paid_cents, settled.balance_cents, settled.holds) == (6000, 4000, [])
    assert settled.status is InvoiceStatus.PARTIALLY_PAID


def test_credit_is_taken_from_the_oldest_payment_first() -> None:
    newer, older = _payment("pay_new", 4000, 4000, minutes=5), _payment("pay_old", 1000, 1000)
    uses = take_credit([newer, older], "inv_1", 3000)
    assert [(u.payment.payment_id, u.amount_cents) for u in uses] == [("pay_old", 1000), ("pay_new", 2000)]
    assert uses[1].payment.unallocated_cents == 2000


def test_a_refund_takes_credit_first_then_the_newest_allocations() -> None:
    paid = _payment("pay_1", 9000, 1000).model_copy(
        update={
            "allocations": [
                PaymentAllocation(invoice_id="inv_1", amount_cents=5000),
                PaymentAllocation(invoice_id="inv_2", amount_cents=3000),
            ]
        }
    )
    takes = plan_refund_takes(paid, 2500)
    assert [(t.invoice_id, t.amount_cents) for t in takes] == [(None, 1000), ("inv_2", 1500)]


def test_never_refund_more_than_is_refundable_nor_what_is_already_being_refunded() -> None:
    paid = _payment("pay_1", 1000, 1000)
    with pytest.raises(Conflict, match="exceeds"):
        check_refundable(paid, 1001)
    pending = paid.model_copy(update={"pending_refund_cents": 600})
    assert check_refundable(pending, None) == 400
    with pytest.raises(Conflict, match="exceeds"):
        check_refundable(pending, 401)


def test_a_unit_of_work_derives_the_account_from_the_objects_transitions() -> None:
    pending = _payment("pay_1", 9000)
    succeeded = pending.next(status=PaymentStatus.SUCCEEDED, unallocated_cents=1000)
    invoice = _invoice(1, 8000)
    paid = invoice.with_hold("pay_1", 8000).with_hold_settled("pay_1")
    invoice = paid.model_copy(update={"allocations": [], "version": paid.version - 1})
    unit = UnitOfWork("p").change(pending, succeeded).change(invoice, paid)
    account = unit.accounts["cli_1"]
    assert (account.paid_cents, account.unallocated_credit_cents, account.invoiced_cents) == (9000, 1000, 0)
    assert (account.closed, account.credit_added) == ({"inv_1"}, {"pay_1"})
    new_invoice = UnitOfWork("p").create(_invoice(2, 3000)).accounts["cli_1"]
    assert (new_invoice.invoiced_cents, new_invoice.opened) == (3000, {"inv_2"})
    with pytest.raises(ValueError, match="next version"):
        UnitOfWork("p").change(pending, pending)


def test_idempotent_ids_are_deterministic_per_practice_and_carry_no_input() -> None:
    first = idempotent_id("pay", "prac_1", "Jane Doe 1980-01-01")
    assert first == idempotent_id("pay", "prac_1", "Jane Doe 1980-01-01")
    assert first != idempotent_id("pay", "prac_2", "Jane Doe 1980-01-01")
    assert "Jane" not in first and "1980" not in first
