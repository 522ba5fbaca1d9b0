"""Injected faults on the real code paths: DynamoDB throttles and cancelled transactions (at the botocore level,
through a client built as the functions build theirs: standard retries, 3 attempts), card processor answers
lost after the money moved, S3 refusing a document, SQS delivering a batch again. After the system's own
retries the outcome is one charge and balanced books, or a clear failure with nothing half-written that a
retry then completes. docs/architecture.md, "Failure handling", lists each fault and its designed outcome."""

import importlib.util
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from pydantic import SecretStr

from billing import autopay
from billing.autopay import AutoPayRequest, Outcome
from billing.cards import CardRequest, add_card
from billing.errors import ProcessorUnavailable
from billing.invoice_service import create_invoice, void_invoice
from billing.invoices import InvoiceRequest
from billing.nightly import PracticeNight
from billing.payment_service import invoice_and_pay, take_payment
from billing.payments import (
    AppointmentPaymentRequest,
    PaymentMethod,
    PaymentRequest,
    PaymentStatus,
    RefundStatus,
    idempotent_id,
    key_digest,
)
from billing.practices import InvoiceCreation, PracticeSettings, save_practice
from billing.refund_service import refund_payment
from billing_aws import keys
from billing_aws.store import BillingStore
from billing_lambda import aws_clients, config, observability, wiring
from billing_stripe.gateway import MAX_NETWORK_RETRIES, StripeGateway, StripeSettings
from local.aws import LocalAws
from local.scheduler import DrainReport, QueueSource, deliver_batch
from local.stripe_emulator import StripeEmulator
from local.template import Resolver
from local.worker import LambdaContext
from tests.fakes.gateway import FakeGateway
from tests.integration.conftest import Books, NoSchedules, open_books
from tests.integration.test_exactly_once import _assert_books_balance, _card_client, _invoices, _key
from tests.support.faults import (
    LOST_ANSWER,
    S3_UNAVAILABLE,
    THROTTLED,
    THROTTLING,
    AwsError,
    Fault,
    cancelled,
    function_client,
    inject,
    outlasting_retries,
)

FUNCTIONS = Path(__file__).resolve().parents[2] / "functions"
REGION = "us-east-1"
RESERVES = {"kind": "payment", "status": "pending"}  # the transaction that records a payment and its holds
SETTLES = {"kind": "payment", "status": "succeeded"}  # the one that turns its holds into allocations
INVOICE = {"kind": "invoice"}  # a transaction that puts an invoice: issues it (the first one), pays or voids it
REFUNDS = {"kind": "refund", "status": "succeeded"}  # the one that takes a refund off the books
CONFLICTS = [cancelled("ConditionalCheckFailed"), cancelled("TransactionConflict")]


@pytest.fixture(scope="module")
def dynamodb(local_aws: tuple[LocalAws, Resolver]) -> Any:
    """A DynamoDB client built as the functions build theirs (`billing_lambda.aws_clients`)."""
    return function_client("dynamodb")


@pytest.fixture
def store(local_aws: tuple[LocalAws, Resolver], dynamodb: Any) -> BillingStore:
    """The table through that client: every use case below meets the faults injected into it."""
    return BillingStore(dynamodb, local_aws[1].physical_name("BillingTable"))


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


def _outlasting(
    client: Any,
    error: AwsError,
    puts: dict[str, str] | None = None,
    call: int = 1,
    operation: str = "TransactWriteItems",
) -> Fault:
    """A fault on every attempt the client makes: the SDK gives up and raises it."""
    return Fault(operation, error, puts=puts, call=call, attempts=outlasting_retries(client))


def _card_payment(books: Books, gateway: Any, client_id: str, amount: int, key: str) -> Any:
    request = PaymentRequest(client_id=client_id, amount_cents=amount, method=PaymentMethod.CARD_ON_FILE)
    return take_payment(books.store, gateway, books.clock, books.practice, request, key)


@pytest.fixture
def owing(books: Books, gateway: FakeGateway) -> tuple[str, str]:
    """A client with a card on file and one open invoice of 5000."""
    client_id = _card_client(books, gateway)
    [invoice_id] = _invoices(books, client_id, 1, fee=5000)
    return client_id, invoice_id


# -- what the HTTP edge answers 503 ---------------------------------------------------------------------------


def _client_error(code: str, status: int) -> ClientError:
    response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "TransactWriteItems")


def _code(error: Exception) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Code") or type(error).__name__)


BUSY = [
    _client_error("ProvisionedThroughputExceededException", 400),
    _client_error("ThrottlingException", 400),
    _client_error("InternalServerError", 500),
    _client_error("SlowDown", 503),
    EndpointConnectionError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com"),
]
OURS = [
    _client_error(code, 400) for code in ("ValidationException", "AccessDeniedException", "ResourceNotFoundException")
]


@pytest.mark.parametrize("error", BUSY, ids=_code)
def test_an_aws_busy_or_out_of_reach_after_the_retries_is_a_503(error: Exception) -> None:
    assert aws_clients.unavailable(error)


@pytest.mark.parametrize("error", OURS, ids=_code)
def test_an_aws_error_that_says_our_call_was_wrong_stays_a_500(error: Exception) -> None:
    assert not aws_clients.unavailable(error)


@pytest.mark.parametrize(("reason", "busy"), [("ThrottlingError", True), ("ValidationError", False)])
def test_a_transaction_cancelled_for_anything_but_a_race_is_not_retried_as_one(
    books: Books, dynamodb: Any, reason: str, busy: bool
) -> None:
    """A throttled item is load (503, the request retried as it was), a validation error is a bug (500): neither
    is planned again ten times and then answered 409 as if another writer kept winning."""
    request = _invoice_request(books, books.client())
    fault = Fault("TransactWriteItems", cancelled(reason), puts=INVOICE)
    with inject(dynamodb, fault) as injected, pytest.raises(ClientError) as raised:
        create_invoice(books.store, books.clock, books.practice_id, request)
    assert injected.matched == 1
    assert aws_clients.unavailable(raised.value) is busy
    assert books.refresh().last_invoice_sequence == 0


# -- DynamoDB on payment writes -------------------------------------------------------------------------------


def test_a_throttled_reserve_is_retried_away_by_the_sdk_and_charges_once(
    books: Books, gateway: FakeGateway, dynamodb: Any, owing: tuple[str, str]
) -> None:
    client_id, _ = owing
    with inject(dynamodb, Fault("TransactWriteItems", THROTTLED, puts=RESERVES)) as fault:
        payment = _card_payment(books, gateway, client_id, 5000, _key())
    assert (fault.failed, fault.sent) == (1, 2)  # the SDK's second attempt went through
    assert payment.status is PaymentStatus.SUCCEEDED and len(gateway.charges) == 1
    assert _assert_books_balance(books, client_id)["balance"] == 0


def test_a_throttle_outlasting_the_sdk_on_the_reserve_writes_nothing_and_the_retry_charges_once(
    books: Books, gateway: FakeGateway, dynamodb: Any, owing: tuple[str, str]
) -> None:
    client_id, invoice_id = owing
    key = _key()
    with inject(dynamodb, _outlasting(dynamodb, THROTTLED, RESERVES)) as fault, pytest.raises(ClientError) as raised:
        _card_payment(books, gateway, client_id, 5000, key)
    assert aws_clients.unavailable(raised.value)  # the HTTP edge answers it 503
    assert fault.failed == outlasting_retries(dynamodb) == 3  # the functions' client gives up after 3 attempts
    pid = books.practice_id
    assert books.store.get_idempotency_record(pid, key_digest(pid, key)) is None
    assert books.store.get_payment(pid, idempotent_id("pay", pid, key)) is None
    assert books.store.get_invoice(pid, invoice_id).holds == []  # type: ignore[union-attr]
    assert gateway.charges == []
    retried = _card_payment(books, gateway, client_id, 5000, key)
    assert retried.status is PaymentStatus.SUCCEEDED and len(gateway.charges) == 1
    assert _assert_books_balance(books, client_id)["balance"] == 0


def test_a_throttle_outlasting_the_sdk_after_the_charge_leaves_it_pending_and_the_retry_records_it_once(
    books: Books, gateway: FakeGateway, dynamodb: Any, owing: tuple[str, str]
) -> None:
    client_id, invoice_id = owing
    key = _key()
    with inject(dynamodb, _outlasting(dynamodb, THROTTLED, SETTLES)), pytest.raises(ClientError):
        _card_payment(books, gateway, client_id, 5000, key)
    pid = books.practice_id
    pending = books.store.get_payment(pid, idempotent_id("pay", pid, key))
    assert pending is not None and pending.status is PaymentStatus.PENDING  # charged, not yet on the books
    invoice = books.store.get_invoice(pid, invoice_id)
    assert invoice is not None and [h.payment_id for h in invoice.holds] == [pending.payment_id]
    assert [c.status for c in gateway.charges] == ["succeeded"]
    assert _assert_books_balance(books, client_id)["balance"] == 5000  # the invoice still owes: nothing half-moved
    retried = _card_payment(books, gateway, client_id, 5000, key)
    assert retried.payment_id == pending.payment_id and retried.status is PaymentStatus.SUCCEEDED
    assert len(gateway.charges) == 1
    assert _assert_books_balance(books, client_id)["balance"] == 0


@pytest.mark.parametrize("writes", [RESERVES, SETTLES], ids=["reserve", "settle"])
@pytest.mark.parametrize("error", CONFLICTS, ids=lambda e: e.reason)
def test_a_cancelled_payment_transaction_is_planned_again_and_charges_once(
    books: Books, gateway: FakeGateway, dynamodb: Any, owing: tuple[str, str], error: AwsError, writes: Any
) -> None:
    client_id, _ = owing
    with inject(dynamodb, Fault("TransactWriteItems", error, puts=writes)) as fault:
        payment = _card_payment(books, gateway, client_id, 5000, _key())
    assert (fault.failed, fault.sent, fault.matched) == (1, 1, 2)  # no SDK retry: `optimistic` planned again
    assert payment.status is PaymentStatus.SUCCEEDED and len(gateway.charges) == 1
    assert _assert_books_balance(books, client_id)["balance"] == 0


@pytest.mark.parametrize("writes", [RESERVES, SETTLES], ids=["reserve", "settle"])
def test_a_payment_transaction_whose_answer_is_lost_is_sent_again_by_the_sdk_and_lands_once(
    books: Books, gateway: FakeGateway, dynamodb: Any, owing: tuple[str, str], writes: Any
) -> None:
    client_id, _ = owing
    with inject(dynamodb, Fault("TransactWriteItems", LOST_ANSWER, puts=writes)) as fault:
        payment = _card_payment(books, gateway, client_id, 5000, _key())
    # DynamoDB answers the retry (same ClientRequestToken) with success and writes nothing: no re-planning
    assert (fault.failed, fault.sent, fault.matched) == (1, 2, 1)
    assert payment.status is PaymentStatus.SUCCEEDED and len(gateway.charges) == 1
    assert _assert_books_balance(books, client_id)["balance"] == 0


# -- DynamoDB on invoice writes --------------------------------------------------------------------------------


def _invoice_request(books: Books, client_id: str) -> InvoiceRequest:
    return InvoiceRequest(client_id=client_id, appointment_ids=[books.appointment(client_id, "2026-11-20T15:00:00Z")])


def test_an_invoice_write_outlasting_the_sdk_leaves_no_invoice_and_no_gap_in_the_numbers(
    books: Books, dynamodb: Any
) -> None:
    client_id = books.client()
    request = _invoice_request(books, client_id)
    with inject(dynamodb, _outlasting(dynamodb, THROTTLING, INVOICE)), pytest.raises(ClientError) as raised:
        create_invoice(books.store, books.clock, books.practice_id, request)
    assert raised.value.response["Error"]["Code"] == "ThrottlingException"
    [appointment] = books.store.appointments_by_id(books.practice_id, request.appointment_ids)
    assert appointment.invoice_id is None and books.refresh().last_invoice_sequence == 0
    invoice = create_invoice(books.store, books.clock, books.practice_id, request)
    assert invoice.number == "INV-000001"


@pytest.mark.parametrize("error", CONFLICTS, ids=lambda e: e.reason)
def test_a_cancelled_invoice_transaction_is_planned_again_with_the_next_number(
    books: Books, dynamodb: Any, error: AwsError
) -> None:
    request = _invoice_request(books, books.client())
    with inject(dynamodb, Fault("TransactWriteItems", error, puts=INVOICE)) as fault:
        invoice = create_invoice(books.store, books.clock, books.practice_id, request)
    assert (fault.failed, fault.matched) == (1, 2)
    assert invoice.number == "INV-000001" and books.refresh().last_invoice_sequence == 1


def test_an_invoice_transaction_whose_answer_is_lost_is_sent_again_by_the_sdk_and_lands_once(
    books: Books, dynamodb: Any
) -> None:
    request = _invoice_request(books, books.client())
    with inject(dynamodb, Fault("TransactWriteItems", LOST_ANSWER, puts=INVOICE)) as fault:
        invoice = create_invoice(books.store, books.clock, books.practice_id, request)
    assert (fault.failed, fault.sent, fault.matched) == (1, 2, 1)
    assert invoice.number == "INV-000001" and books.refresh().last_invoice_sequence == 1


@pytest.mark.parametrize("writes", [INVOICE, SETTLES], ids=["invoice", "settle"])
def test_invoice_and_payment_outlasting_the_sdk_is_completed_once_by_its_retry(
    books: Books, gateway: FakeGateway, dynamodb: Any, writes: dict[str, str]
) -> None:
    client_id = _card_client(books, gateway)
    appointment_id = books.appointment(client_id, "2026-11-20T15:00:00Z", 12_000)
    request = AppointmentPaymentRequest(method=PaymentMethod.CARD_ON_FILE)
    key = _key()

    def invoice_and_charge() -> Any:
        return invoice_and_pay(books.store, gateway, books.clock, books.practice, appointment_id, request, key)

    with inject(dynamodb, _outlasting(dynamodb, THROTTLED, writes)), pytest.raises(ClientError):
        invoice_and_charge()
    assert len(gateway.charges) == (0 if writes is INVOICE else 1)
    done = invoice_and_charge()
    assert done.invoice.number == "INV-000001" and done.invoice.balance_cents == 0
    assert done.payment.status is PaymentStatus.SUCCEEDED and len(gateway.charges) == 1
    assert _assert_books_balance(books, client_id)["balance"] == 0


# -- DynamoDB on refunds and voids -----------------------------------------------------------------------------


def _refund(books: Books, gateway: Any, payment_id: str, amount: int, key: str) -> Any:
    return refund_payment(books.store, gateway, books.clock, books.practice_id, payment_id, amount, key)


def test_a_refund_whose_last_write_outlasts_the_sdk_is_counted_once_by_its_retry(
    books: Books, gateway: FakeGateway, dynamodb: Any, owing: tuple[str, str]
) -> None:
    client_id, _ = owing
    payment = _card_payment(books, gateway, client_id, 5000, _key())
    key = _key()
    with inject(dynamodb, _outlasting(dynamodb, THROTTLED, REFUNDS)), pytest.raises(ClientError):
        _refund(books, gateway, payment.payment_id, 2000, key)
    assert gateway.refunded_cents() == 2000  # refunded at the processor, not yet on the books
    assert _assert_books_balance(books, client_id)["balance"] == 0
    refund = _refund(books, gateway, payment.payment_id, 2000, key)
    assert refund.status is RefundStatus.SUCCEEDED
    assert len(gateway.refunds) == 1 and gateway.refunded_cents() == 2000
    assert _assert_books_balance(books, client_id)["balance"] == 2000


@pytest.mark.parametrize("error", CONFLICTS, ids=lambda e: e.reason)
def test_a_cancelled_refund_transaction_is_planned_again_and_counted_once(
    books: Books, gateway: FakeGateway, dynamodb: Any, owing: tuple[str, str], error: AwsError
) -> None:
    client_id, _ = owing
    payment = _card_payment(books, gateway, client_id, 5000, _key())
    with inject(dynamodb, Fault("TransactWriteItems", error, puts=REFUNDS)) as fault:
        refund = _refund(books, gateway, payment.payment_id, 2000, _key())
    assert fault.failed == 1 and refund.status is RefundStatus.SUCCEEDED
    assert len(gateway.refunds) == 1 and gateway.refunded_cents() == 2000
    assert _assert_books_balance(books, client_id)["balance"] == 2000


def _paid_in_cash(books: Books, fee: int) -> tuple[str, str]:
    client_id = books.client()
    [invoice_id] = _invoices(books, client_id, 1, fee=fee)
    cash = PaymentRequest(client_id=client_id, amount_cents=fee, method=PaymentMethod.CASH)
    take_payment(books.store, FakeGateway(), books.clock, books.practice, cash, _key())
    return client_id, invoice_id


def _void(books: Books, invoice_id: str) -> Any:
    return void_invoice(books.store, books.clock, books.practice_id, invoice_id, lambda _: None)


def test_a_void_outlasting_the_sdk_changes_nothing_and_its_retry_voids_the_invoice_whole(
    books: Books, dynamodb: Any
) -> None:
    client_id, invoice_id = _paid_in_cash(books, 4000)
    with inject(dynamodb, _outlasting(dynamodb, THROTTLED, INVOICE)), pytest.raises(ClientError):
        _void(books, invoice_id)
    unchanged = books.store.get_invoice(books.practice_id, invoice_id)
    assert unchanged is not None and not unchanged.voided and unchanged.paid_cents == 4000
    assert _assert_books_balance(books, client_id) == {"balance": 0, "credit": 0, "owed": 0}
    voided = _void(books, invoice_id)
    assert voided.status.value == "void" and voided.allocations == []
    assert _assert_books_balance(books, client_id) == {"balance": -4000, "credit": 4000, "owed": 0}


def test_a_cancelled_void_is_planned_again_and_voids_the_invoice_whole(books: Books, dynamodb: Any) -> None:
    client_id, invoice_id = _paid_in_cash(books, 4000)
    with inject(dynamodb, Fault("TransactWriteItems", cancelled("TransactionConflict"), puts=INVOICE)) as fault:
        voided = _void(books, invoice_id)
    assert fault.failed == 1 and voided.status.value == "void"
    assert _assert_books_balance(books, client_id) == {"balance": -4000, "credit": 4000, "owed": 0}


# -- the card processor moved the money, the answer was lost (or it refused before acting) -----------------------


@pytest.mark.parametrize("fault", ["timeout_after_success", "server_error"])
def test_invoice_and_payment_after_a_processor_fault_charges_once(
    books: Books, gateway: FakeGateway, fault: str
) -> None:
    client_id = _card_client(books, gateway)
    appointment_id = books.appointment(client_id, "2026-11-20T15:00:00Z", 9000)
    request = AppointmentPaymentRequest(method=PaymentMethod.CARD_ON_FILE)
    key = _key()
    gateway.queue_fault("charge", fault)
    with pytest.raises(ProcessorUnavailable):  # answered 503: retry with the same key
        invoice_and_pay(books.store, gateway, books.clock, books.practice, appointment_id, request, key)
    done = invoice_and_pay(books.store, gateway, books.clock, books.practice, appointment_id, request, key)
    assert done.payment.status is PaymentStatus.SUCCEEDED and done.invoice.status.value == "paid"
    assert [c.status for c in gateway.charges] == ["succeeded"]
    assert _assert_books_balance(books, client_id)["balance"] == 0


@pytest.mark.parametrize("fault", ["timeout_after_success", "rate_limited"])
def test_a_refund_after_a_processor_fault_is_refunded_and_counted_once(
    books: Books, gateway: FakeGateway, owing: tuple[str, str], fault: str
) -> None:
    client_id, _ = owing
    payment = _card_payment(books, gateway, client_id, 5000, _key())
    key = _key()
    gateway.queue_fault("refund", fault)
    with pytest.raises(ProcessorUnavailable):
        _refund(books, gateway, payment.payment_id, 3000, key)
    assert _assert_books_balance(books, client_id)["balance"] == 0  # nothing counted while the outcome is unknown
    refund = _refund(books, gateway, payment.payment_id, 3000, key)
    assert refund.status is RefundStatus.SUCCEEDED
    assert len(gateway.refunds) == 1 and gateway.refunded_cents() == 3000
    assert _assert_books_balance(books, client_id)["balance"] == 3000


# -- SQS workers: a record fails, the batch comes again, a message comes twice ----------------------------------


class FunctionEnvironment:
    """A function's handler loaded in this process with its own environment (template.yaml, resolved locally)
    and its clients, settings and store made afresh, so faults can be armed on the very clients it uses."""

    def __init__(self, resolver: Resolver, monkeypatch: pytest.MonkeyPatch) -> None:
        self.resolver, self.monkeypatch = resolver, monkeypatch

    def load(self, function_id: str, folder: str, module: str, **environment: str) -> ModuleType:
        variables = {**self.resolver.function_environment(function_id), **environment}
        for name, value in variables.items():
            self.monkeypatch.setenv(name, value)
        # The shared Metrics object read its namespace when this process first imported it.
        self.monkeypatch.setattr(observability.metrics, "namespace", variables["POWERTOOLS_METRICS_NAMESPACE"])
        self.monkeypatch.syspath_prepend(str(FUNCTIONS / folder))
        spec = importlib.util.spec_from_file_location(f"faults_{folder}_{module}", FUNCTIONS / folder / f"{module}.py")
        assert spec is not None and spec.loader is not None
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        return loaded

    def context(self, function_id: str) -> LambdaContext:
        return LambdaContext(
            function_name=function_id,
            memory_limit_in_mb=512,
            invoked_function_arn=self.resolver.function_arn(function_id),
            aws_request_id=str(uuid.uuid4()),
            deadline=time.monotonic() + 60,
        )


@pytest.fixture
def functions(local_aws: tuple[LocalAws, Resolver], monkeypatch: pytest.MonkeyPatch) -> Iterator[FunctionEnvironment]:
    caches = [aws_clients.client, config.load_settings, wiring.store]
    for cached in caches:
        cached.cache_clear()
    yield FunctionEnvironment(local_aws[1], monkeypatch)
    for cached in caches:
        cached.cache_clear()


@dataclass
class WorkerQueue:
    """A queue of its own feeding one worker in this process, the way Lambda's event source mapping does
    (`local.scheduler.deliver_batch`: the worker's batchItemFailures stay on the queue, the rest is deleted)."""

    sqs: Any
    source: QueueSource
    handler: Callable[[dict[str, Any], Any], Any]
    functions: FunctionEnvironment
    handles: dict[str, str] = field(default_factory=dict)

    def send(self, *bodies: str) -> list[str]:
        return [self.sqs.send_message(QueueUrl=self.source.queue_url, MessageBody=b)["MessageId"] for b in bodies]

    def deliver(self, copies: int = 1) -> set[str]:
        """One batch of what is visible (``copies`` times: SQS delivers at least once); the ids of the messages
        that failed (and stay on the queue)."""
        received = self.sqs.receive_message(
            QueueUrl=self.source.queue_url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
        )
        messages = received.get("Messages", [])
        assert messages, "nothing to deliver"
        self.handles = {m["MessageId"]: m["ReceiptHandle"] for m in messages}

        def invoke(function_id: str, event: Any) -> Any:
            return self.handler(event, self.functions.context(function_id))

        report = DrainReport()
        return set().union(
            *(deliver_batch(self.sqs, self.source, messages, invoke, REGION, report) for _ in range(copies))
        )

    def redeliver(self, message_ids: set[str]) -> set[str]:
        """The failed messages' visibility timeout ends: they come back, as a batch of their own."""
        for message_id in message_ids:
            handle = self.handles[message_id]
            self.sqs.change_message_visibility(
                QueueUrl=self.source.queue_url, ReceiptHandle=handle, VisibilityTimeout=0
            )
        return self.deliver()


@pytest.fixture
def worker_queue(
    local_aws: tuple[LocalAws, Resolver], functions: FunctionEnvironment
) -> Callable[[str, Callable[..., Any]], WorkerQueue]:
    sqs = local_aws[0].client("sqs")

    def make(function_id: str, handler: Callable[..., Any]) -> WorkerQueue:
        url = sqs.create_queue(QueueName=f"faults-{uuid.uuid4().hex[:12]}", Attributes={"VisibilityTimeout": "300"})[
            "QueueUrl"
        ]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        return WorkerQueue(sqs, QueueSource(function_id, url, arn, 10, True), handler, functions)

    return make


def _practice(books: Books, **settings: Any) -> Books:
    values = {"name": "Test", "timezone": "America/Chicago", "invoice_creation": InvoiceCreation.DAILY} | settings
    save_practice(books.store, NoSchedules(), books.clock, books.practice_id, PracticeSettings(**values))
    books.refresh()
    return books


def _invoice_numbers(books: Books, client_id: str) -> list[str]:
    ledger = books.store.client_ledger(books.practice_id, client_id)
    assert ledger is not None
    return sorted(i.number for i in books.store.invoices_by_id(books.practice_id, ledger.open_invoice_ids))


def test_the_daily_invoices_worker_fails_only_the_practice_whose_write_failed_and_its_redelivery_invoices_once(
    store: BillingStore, functions: FunctionEnvironment, worker_queue: Callable[..., WorkerQueue]
) -> None:
    worker = functions.load("DailyInvoicesWorkerFunction", "daily_invoices", "worker")
    queue = worker_queue("DailyInvoicesWorkerFunction", worker.lambda_handler)
    failing, fine = open_books(store), open_books(store)
    clients = {books.practice_id: [books.client(), books.client()] for books in (failing, fine)}
    for books in (failing, fine):
        for client_id in clients[books.practice_id]:
            books.appointment(client_id, "2026-11-27T16:00:00Z")
    nights = [PracticeNight(practice_id=b.practice_id, business_date=date(2026, 11, 28)) for b in (failing, fine)]
    failing_id, _ = queue.send(*(night.model_dump_json() for night in nights))
    client = aws_clients.client("dynamodb")  # the worker's own client
    second_invoice = INVOICE | {"PK": keys.practice_pk(failing.practice_id)}
    with inject(client, _outlasting(client, THROTTLED, second_invoice, call=2)):
        assert queue.deliver() == {failing_id}  # reported in batchItemFailures; the other practice is done
    numbers = sorted(_invoice_numbers(failing, c) for c in clients[failing.practice_id])
    assert numbers == [[], ["INV-000001"]]  # one client's invoice written whole, the other's not at all
    assert queue.redeliver({failing_id}) == set()
    queue.send(*(night.model_dump_json() for night in nights))  # the night's entry run again
    assert queue.deliver(copies=2) == set()
    for books in (failing, fine):
        numbers = [_invoice_numbers(books, c) for c in clients[books.practice_id]]
        assert sorted(numbers) == [["INV-000001"], ["INV-000002"]]
        assert books.refresh().last_invoice_sequence == 2


@pytest.fixture(scope="module")
def emulator() -> Iterator[StripeEmulator]:
    running = StripeEmulator(webhook_url=None, webhook_secret="whsec_faults")
    running.start(port=0)
    yield running
    running.stop()


STRIPE_ATTEMPTS = 1 + MAX_NETWORK_RETRIES
EMULATOR_FAULTS: dict[str, Callable[[StripeEmulator], None]] = {
    "timeout_after_success": lambda e: e.fail_after_success("/v1/payment_intents", times=STRIPE_ATTEMPTS),
    "500_after_success": lambda e: e.fail_after_success("/v1/payment_intents", times=STRIPE_ATTEMPTS, status=500),
    # the SDK does not retry a 429 itself: the record fails at once and its redelivery replays the charge
    "429_after_success": lambda e: e.fail_after_success("/v1/payment_intents", times=1, status=429),
    "server_error": lambda e: e.fail_next_request("/v1/payment_intents", times=STRIPE_ATTEMPTS, status=500),
}
NIGHT = date(2026, 11, 28)
AT_0330 = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)  # 03:30 in Chicago


@pytest.mark.parametrize("fault", sorted(EMULATOR_FAULTS))
def test_autopay_through_stripe_fails_only_the_lost_charge_and_its_redelivery_charges_it_once(
    books: Books,
    functions: FunctionEnvironment,
    worker_queue: Callable[..., WorkerQueue],
    emulator: StripeEmulator,
    fault: str,
) -> None:
    emulator.reset()
    secret = {"STRIPE_SECRET_KEY": "sk_test_faults", "STRIPE_API_BASE": emulator.url}
    worker = functions.load("AutoPayWorkerFunction", "autopay", "worker", **secret)
    stripe = StripeGateway(StripeSettings(secret_key=SecretStr(secret["STRIPE_SECRET_KEY"]), api_base=emulator.url))
    _practice(books, autopay_enabled=True)
    client_ids = [books.client(), books.client()]
    for client_id in client_ids:
        add_card(
            books.store,
            stripe,
            books.clock,
            books.practice_id,
            client_id,
            CardRequest(payment_method_id="pm_card_visa"),
        )
        autopay.set_autopay(books.store, books.clock, books.practice, client_id, AutoPayRequest(enabled=True), "staff")
        _invoices(books, client_id, 1, fee=7000)
    queue = worker_queue("AutoPayWorkerFunction", worker.lambda_handler)
    nights = [
        worker.ClientNight(
            practice_id=books.practice_id, client_id=c, business_date=NIGHT, at=AT_0330
        ).model_dump_json()
        for c in client_ids
    ]
    sent = queue.send(*nights)
    EMULATOR_FAULTS[fault](emulator)  # meets the batch's first charge
    failed = queue.deliver()  # ProcessorUnavailable fails that record alone; the other client is charged
    assert len(failed) == 1 and failed <= set(sent)
    assert queue.redeliver(failed) == set()
    queue.send(*nights)  # the night's entry run again
    assert queue.deliver(copies=2) == set()
    for client_id in client_ids:
        intents = [pi for pi in emulator.payment_intents() if pi["metadata"]["client_id"] == client_id]
        assert [(pi["status"], pi["amount"]) for pi in intents] == [("succeeded", 7000)]
        assert _assert_books_balance(books, client_id)["balance"] == 0
    outcomes = {a.client_id: a.outcome for a in autopay.night_report(books.store, books.practice_id, NIGHT)}
    assert outcomes == dict.fromkeys(client_ids, Outcome.CHARGED)


def test_the_finance_export_worker_fails_a_half_written_export_and_its_redelivery_writes_it_whole(
    local_aws: tuple[LocalAws, Resolver],
    store: BillingStore,
    functions: FunctionEnvironment,
    worker_queue: Callable[..., WorkerQueue],
) -> None:
    finance = functions.load("FinanceExportWorkerFunction", "finance_export", "app")
    queue = worker_queue("FinanceExportWorkerFunction", finance.worker_handler)
    practices = [open_books(store), open_books(store)]
    for books in practices:
        client_id = books.client()
        create_invoice(books.store, books.clock, books.practice_id, _invoice_request(books, client_id))
    day = books.clock.now().date()
    sent = queue.send(
        *(PracticeNight(practice_id=b.practice_id, business_date=day).model_dump_json() for b in practices)
    )
    s3 = aws_clients.client("s3")  # the worker's own client
    aws, resolver = local_aws
    bucket = resolver.physical_name("DocumentsBucket")

    def exported(books: Books) -> list[str]:
        listed = aws.client("s3").list_objects_v2(Bucket=bucket, Prefix=f"exports/{books.practice_id}/finance/")
        return sorted(o["Key"].rsplit("/", 1)[1] for o in listed.get("Contents", []))

    with inject(s3, _outlasting(s3, S3_UNAVAILABLE, call=2, operation="PutObject")):  # the batch's second CSV
        failed = queue.deliver()
    assert len(failed) == 1 and failed <= set(sent)  # that practice's record alone
    assert sorted(exported(b) for b in practices) == [["invoices.csv"], ["invoices.csv", "payments.csv"]]
    assert queue.redeliver(failed) == set()
    assert [exported(b) for b in practices] == [["invoices.csv", "payments.csv"]] * 2
