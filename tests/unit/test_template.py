"""Security and contract properties of template.yaml that every edit must keep."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from local.iam_audit import Need, Statement, allowed
from local.template import QUEUE_TYPE, ROLE_TYPE, SQS_POLLER_ACTIONS, Resolver, load_template
from local.template import Template as LocalTemplate

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

FUNCTION = "AWS::Serverless::Function"
WEBHOOK_ROUTE = ("StripeWebhookFunction", "POST", "/webhooks/stripe")
JWT_AUTHORIZER = "CognitoAuthorizer"
DEFAULT_HANDLER = "app.lambda_handler"

Template = dict[str, Any]
Route = tuple[str, str, str]


@pytest.fixture(scope="module")
def stack() -> LocalTemplate:
    """template.yaml as the local stack and the IAM audit read it."""
    return load_template(TEMPLATE)


@pytest.fixture(scope="module")
def template(stack: LocalTemplate) -> Template:
    return stack.document


@pytest.fixture(scope="module")
def architecture_functions() -> dict[str, dict[str, Any]]:
    """The Functions table of docs/architecture.md: logical id -> code uri, handler, routes."""
    functions: dict[str, dict[str, Any]] = {}
    for line in ARCHITECTURE.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not re.fullmatch(r"`\w+Function`", cells[0]):
            continue
        code_uri = re.search(r"`(functions/[^`]+)`", cells[1])
        handler = re.search(r"`Handler: ([^`]+)`", cells[1])
        assert code_uri, line
        routes = {
            (method, path)
            for methods, path in re.findall(r"`([A-Z]+(?:,[A-Z]+)*) (/[^`]*)`", cells[2])
            for method in methods.split(",")
        }
        functions[cells[0].strip("`")] = {
            "CodeUri": code_uri.group(1),
            "Handler": handler.group(1) if handler else DEFAULT_HANDLER,
            "routes": routes,
        }
    assert functions, "no function rows found in docs/architecture.md"
    return functions


def resources(template: Template, resource_type: str) -> dict[str, Any]:
    return {name: resource for name, resource in template["Resources"].items() if resource["Type"] == resource_type}


def function_property(template: Template, function: str, name: str) -> Any:
    """A function's property, falling back to Globals as SAM does."""
    properties = template["Resources"][function]["Properties"]
    if name in properties:
        return properties[name]
    return template.get("Globals", {}).get("Function", {}).get(name)


def http_routes(template: Template) -> dict[Route, dict[str, Any]]:
    routes: dict[Route, dict[str, Any]] = {}
    for function, resource in resources(template, FUNCTION).items():
        for event in resource["Properties"].get("Events", {}).values():
            if event["Type"] == "HttpApi":
                props = event["Properties"]
                routes[(function, props["Method"].upper(), props["Path"])] = props
    return routes


def policy_statements(template: Template, function: str) -> list[dict[str, Any]]:
    """What the function's execution role may do: its own ``Role``'s policies, or those SAM makes for it."""
    return LocalTemplate(TEMPLATE, template).execution_role_statements(function)


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def walk(node: Any) -> Iterator[Any]:
    """Every key and scalar in the template."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)
    else:
        yield node


def deny_insecure_transport(statements: list[dict[str, Any]]) -> bool:
    return any(
        statement["Effect"] == "Deny"
        and str(statement.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport")).lower() == "false"
        for statement in statements
    )


def test_no_sam_crud_policy_template_is_used_anywhere(template: Template) -> None:
    crud = [str(node) for node in walk(template) if str(node).endswith("CrudPolicy")]
    assert crud == []


def test_function_permissions_are_inline_statements(template: Template) -> None:
    for function in resources(template, FUNCTION):
        for policy in template["Resources"][function]["Properties"].get("Policies", []):
            assert isinstance(policy, dict) and "Statement" in policy, (
                function,
                policy,
            )


def test_function_permissions_name_exact_actions_and_resources(
    template: Template,
) -> None:
    for function in resources(template, FUNCTION):
        for statement in policy_statements(template, function):
            assert statement["Effect"] == "Allow", (function, statement)
            assert all("*" not in action for action in as_list(statement["Action"])), (
                function,
                statement,
            )
            assert "*" not in as_list(statement["Resource"]), (function, statement)


def test_billing_table_has_pitr_deletion_protection_and_customer_managed_key(
    template: Template,
) -> None:
    table = template["Resources"]["BillingTable"]
    props = table["Properties"]
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert props["DeletionProtectionEnabled"] is True
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["SSESpecification"]["SSEType"] == "KMS"
    assert props["SSESpecification"]["KMSMasterKeyId"] == {"Ref": "DataKey"}
    assert table["DeletionPolicy"] == "Retain"
    assert table["UpdateReplacePolicy"] == "Retain"


def test_data_key_rotates(template: Template) -> None:
    assert template["Resources"]["DataKey"]["Properties"]["EnableKeyRotation"] is True


def test_documents_bucket_blocks_public_access_uses_kms_and_denies_plain_http(
    template: Template,
) -> None:
    props = template["Resources"]["DocumentsBucket"]["Properties"]
    assert set(props["PublicAccessBlockConfiguration"]) == {
        "BlockPublicAcls",
        "BlockPublicPolicy",
        "IgnorePublicAcls",
        "RestrictPublicBuckets",
    }
    assert all(flag is True for flag in props["PublicAccessBlockConfiguration"].values())
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"] == {"Fn::GetAtt": ["DataKey", "Arn"]}
    bucket_policies = [
        policy["Properties"]["PolicyDocument"]["Statement"]
        for policy in resources(template, "AWS::S3::BucketPolicy").values()
        if policy["Properties"]["Bucket"] == {"Ref": "DocumentsBucket"}
    ]
    assert any(deny_insecure_transport(statements) for statements in bucket_policies)


def test_every_function_logs_to_its_own_log_group_with_retention(
    template: Template,
) -> None:
    log_groups = resources(template, "AWS::Logs::LogGroup")
    for function in resources(template, FUNCTION):
        logging_config = function_property(template, function, "LoggingConfig")
        assert logging_config, f"{function} has no LoggingConfig"
        log_group_id = logging_config["LogGroup"]["Ref"]
        log_group = log_groups[log_group_id]["Properties"]
        assert log_group["RetentionInDays"] > 0
        function_name = function_property(template, function, "FunctionName")["Fn::Sub"]
        assert log_group["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/{function_name}"}


def test_worker_reports_batch_item_failures_and_queue_outlasts_six_worker_timeouts(
    template: Template,
) -> None:
    worker = "DailyInvoicesWorkerFunction"
    sqs_events = [
        event["Properties"]
        for event in template["Resources"][worker]["Properties"]["Events"].values()
        if event["Type"] == "SQS"
    ]
    assert len(sqs_events) == 1
    (event,) = sqs_events
    assert event["Queue"] == {"Fn::GetAtt": ["DailyInvoicesQueue", "Arn"]}
    assert "ReportBatchItemFailures" in event["FunctionResponseTypes"]
    queue = template["Resources"]["DailyInvoicesQueue"]["Properties"]
    assert queue["VisibilityTimeout"] >= 6 * function_property(template, worker, "Timeout")
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["DailyInvoicesDLQ", "Arn"]}


def test_webhook_route_has_no_authorizer_and_every_other_route_requires_the_jwt(
    template: Template,
) -> None:
    auth = template["Resources"]["BillingHttpApi"]["Properties"]["Auth"]
    assert auth["DefaultAuthorizer"] == JWT_AUTHORIZER
    jwt = auth["Authorizers"][JWT_AUTHORIZER]["JwtConfiguration"]
    assert "${BillingUserPool}" in jwt["issuer"]["Fn::Sub"]
    assert jwt["audience"] == [{"Ref": "BillingUserPoolClient"}]

    routes = http_routes(template)
    assert WEBHOOK_ROUTE in routes
    for route, props in routes.items():
        assert props["ApiId"] == {"Ref": "BillingHttpApi"}, route
        authorizer = props.get("Auth", {}).get("Authorizer", JWT_AUTHORIZER)
        expected = "NONE" if route == WEBHOOK_ROUTE else JWT_AUTHORIZER
        assert authorizer == expected, route


def test_routes_exactly_match_the_architecture_contract(
    template: Template, architecture_functions: dict[str, dict[str, Any]]
) -> None:
    documented = {
        (function, method, path) for function, spec in architecture_functions.items() for method, path in spec["routes"]
    }
    assert set(http_routes(template)) == documented


def test_functions_match_the_architecture_contract(
    template: Template, architecture_functions: dict[str, dict[str, Any]]
) -> None:
    declared = {
        function: {
            "CodeUri": function_property(template, function, "CodeUri").rstrip("/"),
            "Handler": function_property(template, function, "Handler"),
        }
        for function in resources(template, FUNCTION)
    }
    documented = {
        function: {"CodeUri": spec["CodeUri"].rstrip("/"), "Handler": spec["Handler"]}
        for function, spec in architecture_functions.items()
    }
    assert declared == documented


def test_scheduler_may_invoke_only_the_nightly_entries_and_dead_letter_what_it_cannot(template: Template) -> None:
    role = template["Resources"]["SchedulerInvokeRole"]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert "aws:SourceAccount" in trust["Condition"]["StringEquals"]
    statements = [s for policy in role["Policies"] for s in policy["PolicyDocument"]["Statement"]]
    actions = {action for s in statements for action in as_list(s["Action"])}
    assert actions == {"lambda:InvokeFunction", "sqs:SendMessage", "kms:Decrypt", "kms:GenerateDataKey"}
    for statement in statements:
        if statement["Action"] == "lambda:InvokeFunction":
            for resource in as_list(statement["Resource"]):
                assert any(entry in str(resource) for entry in NIGHTLY_ENTRIES), resource


NIGHTLY_ENTRIES = ("DailyInvoicesFunction", "AutoPayFunction", "FinanceExportFunction")


def test_stripe_secret_in_template_is_an_empty_placeholder(template: Template) -> None:
    secret = template["Resources"]["StripeSecret"]["Properties"]
    assert secret["KmsKeyId"] == {"Ref": "DataKey"}
    assert re.fullmatch(r'\{"secret_key": "", "webhook_secret": ""\}', secret["SecretString"]), secret["SecretString"]


# ---------------------------------------------------------------- failures end in a dead-letter queue, boundedly

# SAM events whose sources invoke a function asynchronously.
ASYNC_EVENTS = {
    "Schedule",
    "ScheduleV2",
    "EventBridgeRule",
    "CloudWatchEvent",
    "SNS",
    "S3",
    "CloudWatchLogs",
    "IoTRule",
}
ASYNC_INVOKERS = {"scheduler.amazonaws.com", "events.amazonaws.com"}
# Lambda's own limits on asynchronous retries; SQS redrives within a handful of receives.
MOST_ASYNC_RETRIES = 2
OLDEST_ASYNC_EVENT_SECONDS = 21600
MOST_RECEIVES = 10
SCHEDULES_DLQ_VARIABLE = "SCHEDULES_DLQ_ARN"
DATA_SERVICES = ("dynamodb", "s3", "kms", "sqs")


def named(stack: LocalTemplate, value: Any) -> set[str]:
    """The template resources ``value`` refers to: ``!Ref X``, ``!GetAtt X.Attr``, ``${X}`` in ``!Sub``."""
    if isinstance(value, str):
        return {name for name in re.findall(r"\$\{(\w+)[.}]", value) if name in stack.resources}
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    found = set().union(*(named(stack, item) for item in items))
    if isinstance(value, dict) and value.get("Ref") in stack.resources:
        found.add(str(value["Ref"]))
    if isinstance(value, dict) and isinstance(value.get("Fn::GetAtt"), list):
        found.add(str(value["Fn::GetAtt"][0]))
    return found


def resolved(stack: LocalTemplate, statements: list[dict[str, Any]]) -> list[Statement]:
    """Statements as the IAM audit evaluates them."""
    policies = Resolver(stack).for_policies()
    return [Statement.from_policy(policies.resolve(statement)) for statement in statements]


def may(stack: LocalTemplate, statements: list[Statement], action: str, logical_id: str) -> bool:
    """Whether ``statements`` allow ``action`` on the resource ``logical_id``."""
    return allowed(statements, Need(action, Resolver(stack).arn(logical_id), logical_id))


def may_send_to(stack: LocalTemplate, statements: list[Statement], queue: str) -> bool:
    """Sending to an SSE-KMS queue takes the queue and its key."""
    key = stack.encryption_key(queue)
    key_actions = ("kms:GenerateDataKey", "kms:Decrypt") if key else ()
    return may(stack, statements, "sqs:SendMessage", queue) and all(
        may(stack, statements, action, str(key)) for action in key_actions
    )


def function_statements(stack: LocalTemplate, function: str) -> list[Statement]:
    return resolved(stack, stack.execution_role_statements(function))


def variables(stack: LocalTemplate, function: str) -> dict[str, Any]:
    """A function's own environment variables."""
    return dict((stack.function_property(function, "Environment") or {}).get("Variables") or {})


def asynchronously_invoked(stack: LocalTemplate) -> set[str]:
    """Functions a service invokes asynchronously: SAM events of those kinds, targets a role that Scheduler or
    EventBridge assume may invoke, and functions that declare an EventInvokeConfig."""
    functions = set(stack.functions)
    invoked = {
        function
        for function in functions
        for event in (stack.function_property(function, "Events") or {}).values()
        if event.get("Type") in ASYNC_EVENTS
    }
    invoked |= {function for function in functions if stack.function_property(function, "EventInvokeConfig")}
    for role_id, role in stack.of_type(ROLE_TYPE).items():
        trust = role.get("AssumeRolePolicyDocument", {}).get("Statement", [])
        if not any(named_service in str(s.get("Principal")) for s in trust for named_service in ASYNC_INVOKERS):
            continue
        for statement in stack.role_statements(role_id):
            if "lambda:InvokeFunction" in as_list(statement.get("Action")):
                invoked |= named(stack, statement.get("Resource")) & functions
    return invoked


def unbounded_asynchronous_invocations(stack: LocalTemplate) -> list[str]:
    """Asynchronously invoked functions without bounded retries or a failure queue they may write to."""
    problems = []
    for function in sorted(asynchronously_invoked(stack)):
        config = stack.function_property(function, "EventInvokeConfig") or {}
        if not 0 <= int(config.get("MaximumRetryAttempts", -1)) <= MOST_ASYNC_RETRIES:
            problems.append(f"{function}: EventInvokeConfig.MaximumRetryAttempts is not set to 0-2")
        if not 60 <= int(config.get("MaximumEventAgeInSeconds", 0)) <= OLDEST_ASYNC_EVENT_SECONDS:
            problems.append(f"{function}: EventInvokeConfig.MaximumEventAgeInSeconds is not set")
        failures = named(stack, (stack.function_property(function, "DeadLetterQueue") or {}).get("TargetArn"))
        on_failure = (config.get("DestinationConfig") or {}).get("OnFailure") or {}
        failures |= named(stack, on_failure.get("Destination"))
        queues = {queue for queue in failures if stack.resource_type(queue) == QUEUE_TYPE}
        if not queues:
            problems.append(f"{function}: no DeadLetterQueue or OnFailure destination on a queue of the template")
        statements = function_statements(stack, function)
        problems += [
            f"{function}: may not send to {queue}" for queue in queues if not may_send_to(stack, statements, queue)
        ]
    return problems


def dead_letter_queues(stack: LocalTemplate) -> set[str]:
    """Queues that receive what failed elsewhere: redrive targets, function and schedule failure destinations,
    and the dead-letter queue the code gives the schedules it creates."""
    targets = {queue.dlq_id for queue in stack.queues if queue.dlq_id}
    for function in stack.functions:
        targets |= named(stack, stack.function_property(function, "DeadLetterQueue"))
        targets |= named(stack, (stack.function_property(function, "EventInvokeConfig") or {}).get("DestinationConfig"))
        targets |= named(stack, variables(stack, function).get(SCHEDULES_DLQ_VARIABLE))
    for schedule in stack.schedules:
        targets |= named(stack, (schedule.properties.get("Target") or {}).get("DeadLetterConfig"))
    return {target for target in targets if stack.resource_type(target) == QUEUE_TYPE}


def queues_without_bounded_redrive(stack: LocalTemplate) -> list[str]:
    """Queues (other than dead-letter queues) without a RedrivePolicy to a template queue after a few receives."""
    dead_letters = dead_letter_queues(stack)
    problems = []
    for queue in stack.queues:
        if queue.logical_id in dead_letters:
            continue
        if queue.dlq_id is None or stack.resource_type(queue.dlq_id) != QUEUE_TYPE:
            problems.append(f"{queue.logical_id}: no RedrivePolicy to a dead-letter queue of the template")
        elif not 1 <= int(queue.max_receive_count or 0) <= MOST_RECEIVES:
            problems.append(f"{queue.logical_id}: maxReceiveCount is not between 1 and {MOST_RECEIVES}")
    return problems


def schedules_without_dead_letters(stack: LocalTemplate) -> list[str]:
    """Schedules (declared here, or created by a function) without a bounded RetryPolicy and a DeadLetterConfig
    on a queue their execution role may send to."""
    problems = []
    for schedule in stack.schedules:
        target = schedule.properties.get("Target") or {}
        retry = target.get("RetryPolicy") or {}
        if not {"MaximumRetryAttempts", "MaximumEventAgeInSeconds"} <= set(retry):
            problems.append(f"{schedule.logical_id}: no RetryPolicy with both limits")
        problems += _dead_letters_reachable(
            stack, schedule.logical_id, target.get("DeadLetterConfig"), target.get("RoleArn")
        )
    for function in sorted(stack.functions):
        creates = any(
            "scheduler:CreateSchedule" in as_list(statement.get("Action"))
            for statement in stack.execution_role_statements(function)
        )
        if creates:
            settings = variables(stack, function)
            dead_letters, role = settings.get(SCHEDULES_DLQ_VARIABLE), settings.get("SCHEDULER_ROLE_ARN")
            problems += _dead_letters_reachable(stack, function, dead_letters, role)
    return problems


def _dead_letters_reachable(stack: LocalTemplate, owner: str, dead_letters: Any, role: Any) -> list[str]:
    """A schedule's DeadLetterConfig names a queue of the template that its execution role may send to."""
    queues = {queue for queue in named(stack, dead_letters) if stack.resource_type(queue) == QUEUE_TYPE}
    if not queues:
        return [f"{owner}: schedules have no dead-letter queue of the template"]
    statements = [s for role_id in named(stack, role) for s in resolved(stack, stack.role_statements(role_id))]
    return [
        f"{owner}: the schedules' role may not send to {q}" for q in queues if not may_send_to(stack, statements, q)
    ]


def test_asynchronously_invoked_functions_retry_boundedly_then_dead_letter(stack: LocalTemplate) -> None:
    assert asynchronously_invoked(stack) == set(NIGHTLY_ENTRIES)
    assert unbounded_asynchronous_invocations(stack) == []


def test_every_queue_redrives_to_a_dead_letter_queue_after_a_few_receives(stack: LocalTemplate) -> None:
    assert dead_letter_queues(stack) >= {"NightlyEntriesDLQ", "SchedulesDLQ"}
    assert queues_without_bounded_redrive(stack) == []


def test_every_schedule_retries_boundedly_then_dead_letters(stack: LocalTemplate) -> None:
    assert schedules_without_dead_letters(stack) == []


# ---------------------------------------------------------------- least privilege on the data


def identity_statements(stack: LocalTemplate) -> dict[str, list[dict[str, Any]]]:
    """Every identity-based statement of the stack: functions' execution roles and the template's roles."""
    statements = {function: stack.execution_role_statements(function) for function in stack.functions}
    statements.update({role: stack.role_statements(role) for role in stack.of_type(ROLE_TYPE)})
    return statements


def wildcards_on_data(stack: LocalTemplate) -> list[str]:
    """Allow statements on the table, bucket, key or queues with a wildcard action, or a resource that names
    no resource of the template (``*`` above all); and functions whose ``Policies`` SAM would ignore."""
    problems = []
    for owner, statements in identity_statements(stack).items():
        for statement in statements:
            actions = [str(action) for action in as_list(statement.get("Action"))]
            if statement.get("Effect") != "Allow" or not any(a.split(":")[0] in DATA_SERVICES for a in actions):
                continue
            problems += [f"{owner}: wildcard action {action}" for action in actions if "*" in action]
            unnamed = [r for r in as_list(statement.get("Resource")) if not named(stack, r)]
            problems += [f"{owner}: {actions} on {resource}, no resource of the template" for resource in unnamed]
    for function in stack.functions:
        if stack.function_property(function, "Role") and stack.function_property(function, "Policies"):
            problems.append(f"{function}: has a Role, so SAM ignores its Policies")
    return problems


def pollers_beyond_their_queue(stack: LocalTemplate) -> list[str]:
    """SQS consumers that may not poll their own queue (and use its key), or may poll another queue."""
    problems = []
    for source in stack.sqs_event_sources:
        statements = function_statements(stack, source.function_id)
        key = stack.encryption_key(source.queue_id)
        for action in SQS_POLLER_ACTIONS:
            if not may(stack, statements, action, source.queue_id):
                problems.append(f"{source.function_id}: may not {action} on {source.queue_id}")
            others = [q.logical_id for q in stack.queues if q.logical_id != source.queue_id]
            problems += [
                f"{source.function_id}: may {action} on {q}" for q in others if may(stack, statements, action, q)
            ]
        if key and not may(stack, statements, "kms:Decrypt", key):
            problems.append(f"{source.function_id}: may not decrypt {source.queue_id}'s messages")
    return problems


def test_no_wildcard_actions_or_resources_on_the_table_bucket_key_or_queues(stack: LocalTemplate) -> None:
    assert wildcards_on_data(stack) == []


def test_sqs_workers_may_poll_their_own_queue_and_no_other(stack: LocalTemplate) -> None:
    assert {source.function_id for source in stack.sqs_event_sources} == {
        "DailyInvoicesWorkerFunction",
        "AutoPayWorkerFunction",
        "FinanceExportWorkerFunction",
    }
    assert pollers_beyond_their_queue(stack) == []


# ---------------------------------------------------------------- each rule fails a template that breaks it

Mutation = Callable[[dict[str, Any]], None]


def _properties(document: dict[str, Any], logical_id: str) -> dict[str, Any]:
    return document["Resources"][logical_id]["Properties"]


def _statement(document: dict[str, Any], function: str, statement: dict[str, Any]) -> None:
    _properties(document, function)["Policies"][0]["Statement"].append(statement)


def _schedule(target: dict[str, Any]) -> Mutation:
    def add(document: dict[str, Any]) -> None:
        document["Resources"]["StaticSchedule"] = {
            "Type": "AWS::Scheduler::Schedule",
            "Properties": {"ScheduleExpression": "rate(1 day)", "Target": target},
        }

    return add


_ENTRY_TARGET = {
    "Arn": {"Fn::GetAtt": ["AutoPayFunction", "Arn"]},
    "RoleArn": {"Fn::GetAtt": ["SchedulerInvokeRole", "Arn"]},
}
_RETRIES = {"MaximumRetryAttempts": 3, "MaximumEventAgeInSeconds": 600}
_DEAD_LETTERS = {"Arn": {"Fn::GetAtt": ["SchedulesDLQ", "Arn"]}}
_WILDCARD = "sqs:SendMessage*"

MUTATIONS: list[tuple[str, Callable[[LocalTemplate], list[str]], Mutation]] = [
    (
        "an entry without its dead-letter queue",
        unbounded_asynchronous_invocations,
        lambda d: _properties(d, "AutoPayFunction").pop("DeadLetterQueue"),
    ),
    (
        "an entry with Lambda's default retries",
        unbounded_asynchronous_invocations,
        lambda d: _properties(d, "DailyInvoicesFunction")["EventInvokeConfig"].pop("MaximumRetryAttempts"),
    ),
    (
        "an entry with Lambda's default event age",
        unbounded_asynchronous_invocations,
        lambda d: _properties(d, "FinanceExportFunction")["EventInvokeConfig"].pop("MaximumEventAgeInSeconds"),
    ),
    (
        "an entry that may not write to its dead-letter queue's key",
        unbounded_asynchronous_invocations,
        lambda d: _properties(d, "AutoPayFunction")["Policies"][0]["Statement"].pop(),
    ),
    (
        "a queue without a redrive policy",
        queues_without_bounded_redrive,
        lambda d: _properties(d, "AutoPayQueue").pop("RedrivePolicy"),
    ),
    (
        "a queue redriven only after a thousand receives",
        queues_without_bounded_redrive,
        lambda d: _properties(d, "DailyInvoicesQueue")["RedrivePolicy"].update(maxReceiveCount=1000),
    ),
    (
        "schedules created without a dead-letter queue",
        schedules_without_dead_letters,
        lambda d: _properties(d, "CalendarApiFunction")["Environment"]["Variables"].pop(SCHEDULES_DLQ_VARIABLE),
    ),
    (
        "a Scheduler role that may not send to the schedules' dead-letter queue",
        schedules_without_dead_letters,
        lambda d: _properties(d, "SchedulerInvokeRole")["Policies"][0]["PolicyDocument"]["Statement"].pop(1),
    ),
    (
        "a schedule without a dead-letter queue",
        schedules_without_dead_letters,
        _schedule({**_ENTRY_TARGET, "RetryPolicy": _RETRIES}),
    ),
    (
        "a schedule without a retry policy",
        schedules_without_dead_letters,
        _schedule({**_ENTRY_TARGET, "DeadLetterConfig": _DEAD_LETTERS}),
    ),
    (
        "a statement on every table",
        wildcards_on_data,
        lambda d: _statement(
            d, "CalendarApiFunction", {"Effect": "Allow", "Action": "dynamodb:GetItem", "Resource": "*"}
        ),
    ),
    (
        "a wildcard action on a queue",
        wildcards_on_data,
        lambda d: _statement(
            d,
            "AutoPayFunction",
            {"Effect": "Allow", "Action": _WILDCARD, "Resource": {"Fn::GetAtt": ["AutoPayQueue", "Arn"]}},
        ),
    ),
    (
        "a SAM policy template whose actions end in a wildcard",
        wildcards_on_data,
        lambda d: _properties(d, "PortalFunction")["Policies"].append(
            {"SQSSendMessagePolicy": {"QueueName": {"Fn::GetAtt": ["AutoPayQueue", "QueueName"]}}}
        ),
    ),
    (
        "an SQS worker on the role SAM generates (AWSLambdaSQSQueueExecutionRole)",
        wildcards_on_data,
        lambda d: _properties(d, "AutoPayWorkerFunction").pop("Role"),
    ),
    (
        "a worker whose Policies SAM would ignore",
        wildcards_on_data,
        lambda d: _properties(d, "AutoPayWorkerFunction").update(Policies=[{"Statement": []}]),
    ),
    (
        "a worker that may not poll its queue",
        pollers_beyond_their_queue,
        lambda d: _properties(d, "DailyInvoicesWorkerRole")["Policies"][0]["PolicyDocument"]["Statement"].pop(1),
    ),
    (
        "a worker that may poll another queue",
        pollers_beyond_their_queue,
        lambda d: _properties(d, "AutoPayWorkerRole")["Policies"][0]["PolicyDocument"]["Statement"][1].update(
            Resource=[{"Fn::GetAtt": ["AutoPayQueue", "Arn"]}, {"Fn::GetAtt": ["DailyInvoicesQueue", "Arn"]}]
        ),
    ),
]


@pytest.mark.parametrize(
    ("rule", "mutate"), [(rule, mutate) for _, rule, mutate in MUTATIONS], ids=[m[0] for m in MUTATIONS]
)
def test_each_rule_fails_a_template_that_breaks_it(
    stack: LocalTemplate, rule: Callable[[LocalTemplate], list[str]], mutate: Mutation
) -> None:
    assert rule(stack) == []
    document = copy.deepcopy(stack.document)
    mutate(document)
    assert rule(LocalTemplate(TEMPLATE, document)) != []
