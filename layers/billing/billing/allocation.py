"""Where a payment's money goes, planned without storage: the claims it holds before it is charged, the
allocations they become, and how a refund is taken back off the invoices. Pure functions of what was read."""

from billing.errors import Conflict
from billing.invoices import Invoice
from billing.payments import Claim, Payment, PaymentStatus, RefundTake


def payable_invoices(open_invoices: list[Invoice], named: list[str] | None) -> list[Invoice]:
    """The invoices a payment pays: the ones named, in the order given (each must be an open invoice of the
    client), else every open invoice, oldest first."""
    by_id = {i.invoice_id: i for i in open_invoices if i.is_open}
    if not named:
        return sorted(by_id.values(), key=lambda i: (i.issue_date, i.sequence))
    missing = [i for i in named if i not in by_id]
    if missing:
        raise Conflict(f"invoice {missing[0]} is not an unpaid invoice of this client", code="invoice_not_open")
    return [by_id[i] for i in named]


def _in_progress(invoice: Invoice) -> Conflict:
    return Conflict(
        f"a payment for invoice {invoice.invoice_id} is being taken; try again in a moment",
        code="payment_in_progress",
        details=[{"invoice_id": invoice.invoice_id, "held_cents": invoice.held_cents}],
    )


def plan_claims(amount_cents: int, targets: list[Invoice], named: bool, prepay: bool = True) -> list[Claim]:
    """What a payment of ``amount_cents`` claims on ``targets`` before any money moves: what each still has
    available (its balance less what in-flight payments hold), in order. The rest of the amount becomes credit —
    deliberate prepayment — unless it is only left over because another payment is in flight on these invoices
    (then, as for a named invoice another payment holds entirely, the payment is refused (409) before any charge),
    or the payer meant to pay only what is owed (``prepay`` False: the whole balance, as the portal and AutoPay
    do), in which case a balance that shrank meanwhile is a 409 too."""
    claims: list[Claim] = []
    remaining = amount_cents
    for invoice in targets:
        if named and invoice.available_cents == 0:
            raise _in_progress(invoice)
        take = min(invoice.available_cents, remaining)
        if take > 0:
            claims.append(Claim(invoice_id=invoice.invoice_id, amount_cents=take))
            remaining -= take
    if remaining > 0:
        held = [i for i in targets if i.held_cents > 0]
        if held:
            raise _in_progress(held[0])
        if not prepay:  # "pay what I owe" computed a moment ago; it is less now (another payment landed)
            raise Conflict(
                f"only {amount_cents - remaining} of {amount_cents} is still owed; look again before paying",
                code="balance_changed",
                details=[{"owed_cents": amount_cents - remaining}],
            )
    return claims


def check_refundable(payment: Payment, amount_cents: int | None) -> int:
    """The amount to refund (default: all still refundable). Never more than was paid and not yet refunded or
    being refunded."""
    if payment.status is not PaymentStatus.SUCCEEDED:
        raise Conflict(f"payment {payment.payment_id} did not succeed; nothing to refund", code="not_refundable")
    amount = payment.refundable_cents if amount_cents is None else amount_cents
    if amount <= 0 or amount > payment.refundable_cents:
        raise Conflict(
            f"refund of {amount} exceeds the {payment.refundable_cents} still refundable on {payment.payment_id}",
            code="refund_exceeds_refundable",
            details=[{"refundable_cents": payment.refundable_cents}],
        )
    return amount


def plan_refund_takes(payment: Payment, amount_cents: int) -> list[RefundTake]:
    """Take a refund from the payment's unallocated credit first, then from its newest allocations, so the
    invoices it paid go back to unpaid or partially paid."""
    takes: list[RefundTake] = []
    from_credit = min(payment.unallocated_cents, amount_cents)
    if from_credit > 0:
        takes.append(RefundTake(invoice_id=None, amount_cents=from_credit))
    remaining = amount_cents - from_credit
    for allocation in reversed(payment.allocations):
        if remaining <= 0:
            break
        take = min(allocation.amount_cents, remaining)
        takes.append(RefundTake(invoice_id=allocation.invoice_id, amount_cents=take))
        remaining -= take
    if remaining > 0:
        raise Conflict(f"payment {payment.payment_id} has not enough left to refund", code="refund_exceeds_refundable")
    return takes
