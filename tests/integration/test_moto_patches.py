"""The embedded DynamoDB keeps DynamoDB's promises for transactions (`local.moto_patches`): a repeated
ClientRequestToken answers success and writes nothing, and a cancelled transaction leaves every item it named
as it was while costing only those items."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import moto.dynamodb.models as dynamodb_models
import pytest
from botocore.exceptions import ClientError
from moto.core import DEFAULT_ACCOUNT_ID
from moto.dynamodb.models.table import Table
from moto.sqs.models import SQSBackend, sqs_backends

from local import moto_patches
from local.aws import LocalAws
from local.template import Resolver


@pytest.fixture(scope="module")
def table(local_aws: tuple[LocalAws, Resolver]) -> str:
    name = f"fidelity-{uuid.uuid4().hex[:8]}"
    local_aws[0].client("dynamodb").create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "PK", "KeyType": "HASH"}, {"AttributeName": "SK", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "PK", "AttributeType": "S"},
            {"AttributeName": "SK", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


@pytest.fixture
def dynamodb(local_aws: tuple[LocalAws, Resolver]) -> Any:
    return local_aws[0].client("dynamodb")


def _key(partition: str, sort: str = "A") -> dict[str, Any]:
    return {"PK": {"S": partition}, "SK": {"S": sort}}


def _new(table: str, partition: str, sort: str = "A", **values: str) -> dict[str, Any]:
    item = _key(partition, sort) | {name: {"S": value} for name, value in values.items()}
    return {"Put": {"TableName": table, "Item": item, "ConditionExpression": "attribute_not_exists(PK)"}}


def _count(table: str, partition: str) -> dict[str, Any]:
    return {
        "Update": {
            "TableName": table,
            "Key": _key(partition, "counter"),
            "UpdateExpression": "ADD n :one",
            "ExpressionAttributeValues": {":one": {"N": "1"}},
        }
    }


def _items(dynamodb: Any, table: str, partition: str) -> dict[str, dict[str, Any]]:
    answer = dynamodb.query(
        TableName=table,
        KeyConditionExpression="PK = :p",
        ExpressionAttributeValues={":p": {"S": partition}},
        ConsistentRead=True,
    )
    return {item["SK"]["S"]: item for item in answer["Items"]}


def _code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


def test_a_transaction_sent_again_with_its_token_succeeds_and_writes_nothing(dynamodb: Any, table: str) -> None:
    partition, token = uuid.uuid4().hex, uuid.uuid4().hex
    actions = [_new(table, partition), _count(table, partition)]
    dynamodb.transact_write_items(TransactItems=actions, ClientRequestToken=token)
    dynamodb.transact_write_items(TransactItems=actions, ClientRequestToken=token)  # its Put's condition now fails
    assert _items(dynamodb, table, partition)["counter"]["n"] == {"N": "1"}
    with pytest.raises(ClientError) as fresh:  # a new token is a new transaction
        dynamodb.transact_write_items(TransactItems=actions, ClientRequestToken=uuid.uuid4().hex)
    assert _code(fresh) == "TransactionCanceledException"


def test_a_token_used_again_for_other_parameters_is_refused_and_changes_nothing(dynamodb: Any, table: str) -> None:
    partition, token = uuid.uuid4().hex, uuid.uuid4().hex
    dynamodb.transact_write_items(TransactItems=[_count(table, partition)], ClientRequestToken=token)
    with pytest.raises(ClientError) as refused:
        dynamodb.transact_write_items(
            TransactItems=[_count(table, partition), _new(table, partition)], ClientRequestToken=token
        )
    assert _code(refused) == "IdempotentParameterMismatchException"
    assert set(_items(dynamodb, table, partition)) == {"counter"}


def test_a_cancelled_transaction_is_not_kept_so_its_token_runs_it_when_sent_again(dynamodb: Any, table: str) -> None:
    partition, token = uuid.uuid4().hex, uuid.uuid4().hex
    dynamodb.put_item(TableName=table, Item=_key(partition))
    actions = [_new(table, partition), _count(table, partition)]
    with pytest.raises(ClientError) as cancelled:
        dynamodb.transact_write_items(TransactItems=actions, ClientRequestToken=token)
    assert _code(cancelled) == "TransactionCanceledException"
    dynamodb.delete_item(TableName=table, Key=_key(partition))
    dynamodb.transact_write_items(TransactItems=actions, ClientRequestToken=token)
    assert _items(dynamodb, table, partition)["counter"]["n"] == {"N": "1"}


def test_a_cancelled_transaction_leaves_every_item_it_named_as_it_was(dynamodb: Any, table: str) -> None:
    partition = uuid.uuid4().hex
    dynamodb.put_item(TableName=table, Item=_key(partition, "kept") | {"v": {"S": "before"}})
    dynamodb.put_item(TableName=table, Item=_key(partition, "gone") | {"v": {"S": "before"}})
    before = _items(dynamodb, table, partition)
    actions = [
        _new(table, partition, "added", v="new"),
        {
            "Update": {
                "TableName": table,
                "Key": _key(partition, "kept"),
                "UpdateExpression": "SET v = :v",
                "ExpressionAttributeValues": {":v": {"S": "after"}},
            }
        },
        {"Delete": {"TableName": table, "Key": _key(partition, "gone")}},
        _count(table, partition),
        {
            "ConditionCheck": {
                "TableName": table,
                "Key": _key(partition, "absent"),
                "ConditionExpression": "attribute_exists(PK)",
            }
        },
    ]
    with pytest.raises(ClientError) as cancelled:
        dynamodb.transact_write_items(TransactItems=actions)
    reasons = [reason["Code"] for reason in cancelled.value.response["CancellationReasons"]]
    assert reasons == ["None", "None", "None", "None", "ConditionalCheckFailed"]
    assert _items(dynamodb, table, partition) == before


def test_a_transaction_copies_its_own_items_never_a_whole_table() -> None:
    moto_patches.install()
    moto_patches.install()  # once is enough; again changes nothing
    table = Table(
        "any",
        "123456789012",
        "us-east-1",
        schema=[{"AttributeName": "PK", "KeyType": "HASH"}],
        attr=[{"AttributeName": "PK", "AttributeType": "S"}],
    )
    assert dynamodb_models.copy.deepcopy(table) is table
    item = {"PK": {"S": "x"}}
    copied = dynamodb_models.copy.deepcopy(item)
    assert copied == item and copied is not item


def test_a_kept_answer_lasts_dynamodbs_ten_minutes() -> None:
    now = [0.0]
    calls: list[bytes] = []

    def moto(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        calls.append(environ["wsgi.input"].read())
        start_response("200 OK", [("Content-Type", "application/x-amz-json-1.0")])
        return [b"{}"]

    served = moto_patches.idempotent_transactions(moto, clock=lambda: now[0])
    body = json.dumps({"TransactItems": [], "ClientRequestToken": "t"}).encode()

    def send() -> None:
        environ = {
            "HTTP_X_AMZ_TARGET": moto_patches.TRANSACT_TARGET,
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
        }
        assert list(served(environ, lambda status, headers, exc_info=None: None)) == [b"{}"]

    send()
    now[0] = moto_patches.TOKEN_WINDOW_SECONDS
    send()
    assert len(calls) == 1  # answered from the kept answer
    now[0] = 2 * moto_patches.TOKEN_WINDOW_SECONDS + 1
    send()
    assert len(calls) == 2  # the token has expired: a new transaction


def _rich_item(partition: str, sort: str) -> dict[str, Any]:
    return _key(partition, sort) | {
        "text": {"S": "é ü </script>"},
        "number": {"N": "-12.50"},
        "flag": {"BOOL": True},
        "nothing": {"NULL": True},
        "tags": {"SS": ["a", "b"]},
        "amounts": {"NS": ["1", "2"]},
        "list": {"L": [{"S": "x"}, {"N": "1"}, {"M": {"k": {"S": "v"}}}]},
        "map": {"M": {"inner": {"L": []}, "empty": {"M": {}}}},
    }


ITEM_OPERATIONS: dict[str, Callable[[Any, str, str], Any]] = {
    "GetItem": lambda db, t, p: db.get_item(TableName=t, Key=_key(p, "1"), ReturnConsumedCapacity="TOTAL"),
    "GetItem missing": lambda db, t, p: db.get_item(TableName=t, Key=_key(p, "absent")),
    "GetItem projected": lambda db, t, p: db.get_item(
        TableName=t, Key=_key(p, "1"), ProjectionExpression="#m.inner, amounts", ExpressionAttributeNames={"#m": "map"}
    ),
    "Query page": lambda db, t, p: db.query(
        TableName=t,
        KeyConditionExpression="PK = :p",
        ExpressionAttributeValues={":p": {"S": p}},
        Limit=2,
        ReturnConsumedCapacity="TOTAL",
    ),
    "Query count": lambda db, t, p: db.query(
        TableName=t, KeyConditionExpression="PK = :p", ExpressionAttributeValues={":p": {"S": p}}, Select="COUNT"
    ),
    "Scan": lambda db, t, p: db.scan(
        TableName=t, FilterExpression="PK = :p", ExpressionAttributeValues={":p": {"S": p}}
    ),
    "BatchGetItem": lambda db, t, p: db.batch_get_item(
        RequestItems={t: {"Keys": [_key(p, "1"), _key(p, "2"), _key(p, "absent")]}}
    ),
    "BatchWriteItem": lambda db, t, p: db.batch_write_item(
        RequestItems={t: [{"PutRequest": {"Item": _rich_item(p, "4")}}, {"DeleteRequest": {"Key": _key(p, "4")}}]}
    ),
    "PutItem": lambda db, t, p: db.put_item(TableName=t, Item=_rich_item(p, "2"), ReturnValues="ALL_OLD"),
    "UpdateItem": lambda db, t, p: db.update_item(
        TableName=t,
        Key=_key(p, "3"),
        UpdateExpression="ADD #n :one SET flag = :no",
        ExpressionAttributeNames={"#n": "number"},
        ExpressionAttributeValues={":one": {"N": "1"}, ":no": {"BOOL": False}},
        ReturnValues="ALL_NEW",
    ),
    "DeleteItem": lambda db, t, p: db.delete_item(TableName=t, Key=_key(p, "3"), ReturnValues="ALL_OLD"),
    "TransactWriteItems": lambda db, t, p: db.transact_write_items(
        TransactItems=[{"Put": {"TableName": t, "Item": _rich_item(p, "3")}}], ReturnConsumedCapacity="TOTAL"
    ),
    "TransactGetItems": lambda db, t, p: db.transact_get_items(
        TransactItems=[{"Get": {"TableName": t, "Key": _key(p, "1")}}, {"Get": {"TableName": t, "Key": _key(p, "9")}}]
    ),
}


@pytest.mark.parametrize("operation", ITEM_OPERATIONS)
def test_an_item_answer_written_as_json_is_the_answer_motos_serializer_writes(
    dynamodb: Any, table: str, operation: str
) -> None:
    answers = []
    for plain in (False, True):
        partition = uuid.uuid4().hex
        for sort in ("1", "2", "3"):
            dynamodb.put_item(TableName=table, Item=_rich_item(partition, sort))
        moto_patches.plain_answers = plain
        try:
            answer = ITEM_OPERATIONS[operation](dynamodb, table, partition)
        finally:
            moto_patches.plain_answers = True
        answer.pop("ResponseMetadata")
        if operation == "Scan":
            answer.pop("ScannedCount")  # counts the whole table, which grows
        answers.append(json.loads(json.dumps(answer, default=str).replace(partition, "<partition>")))
    assert answers[0] == answers[1]


def test_a_message_past_its_queues_retention_is_never_received(local_aws: tuple[LocalAws, Resolver]) -> None:
    aws = local_aws[0]
    sqs = aws.client("sqs")
    assert SQSBackend.is_message_valid_based_on_retention_period is moto_patches.retention_of_its_queue
    bodies = {}
    for age in (0, 61):
        name = f"retention-{uuid.uuid4().hex[:8]}"
        url = sqs.create_queue(QueueName=name, Attributes={"MessageRetentionPeriod": "60"})["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody=f"sent {age} s ago")
        [message] = sqs_backends[DEFAULT_ACCOUNT_ID][aws.region].get_queue(name)._messages
        message.sent_timestamp -= age * 1000
        bodies[age] = [m["Body"] for m in sqs.receive_message(QueueUrl=url).get("Messages", [])]
    assert bodies == {0: ["sent 0 s ago"], 61: []}


def test_sending_leaves_what_the_queue_reports_and_deduplicates_as_it_was(local_aws: tuple[LocalAws, Resolver]) -> None:
    sqs = local_aws[0].client("sqs")
    standard = sqs.create_queue(QueueName=f"counts-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    sqs.send_message_batch(QueueUrl=standard, Entries=[{"Id": str(i), "MessageBody": f"m{i}"} for i in range(3)])
    sqs.send_message(QueueUrl=standard, MessageBody="delayed", DelaySeconds=900)
    sqs.receive_message(QueueUrl=standard, MaxNumberOfMessages=1, VisibilityTimeout=300)
    counts = sqs.get_queue_attributes(QueueUrl=standard, AttributeNames=["All"])["Attributes"]
    visible, in_flight, delayed = (f"ApproximateNumberOfMessages{kind}" for kind in ("", "NotVisible", "Delayed"))
    assert (counts[visible], counts[in_flight], counts[delayed]) == ("2", "1", "1")
    fifo = sqs.create_queue(
        QueueName=f"dedup-{uuid.uuid4().hex[:8]}.fifo",
        Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"},
    )["QueueUrl"]
    for _ in range(2):  # the same body twice: content-based deduplication keeps one
        sqs.send_message(QueueUrl=fifo, MessageBody="once", MessageGroupId="g")
    received = sqs.receive_message(QueueUrl=fifo, MaxNumberOfMessages=10).get("Messages", [])
    assert [m["Body"] for m in received] == ["once"]
