"""Security and contract properties of template.yaml that every edit must keep."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import cfn_yaml

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
def template() -> Template:
    return cfn_yaml.load(str(TEMPLATE))


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
    policies = template["Resources"][function]["Properties"].get("Policies", [])
    return [statement for policy in policies for statement in policy["Statement"]]


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


def test_scheduler_may_invoke_only_the_nightly_entries(template: Template) -> None:
    role = template["Resources"]["SchedulerInvokeRole"]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert "aws:SourceAccount" in trust["Condition"]["StringEquals"]
    statements = [s for policy in role["Policies"] for s in policy["PolicyDocument"]["Statement"]]
    assert {action for s in statements for action in as_list(s["Action"])} == {"lambda:InvokeFunction"}
    for statement in statements:
        for resource in as_list(statement["Resource"]):
            assert any(entry in str(resource) for entry in NIGHTLY_ENTRIES), resource


NIGHTLY_ENTRIES = ("DailyInvoicesFunction", "AutoPayFunction", "FinanceExportFunction")


def test_stripe_secret_in_template_is_an_empty_placeholder(template: Template) -> None:
    secret = template["Resources"]["StripeSecret"]["Properties"]
    assert secret["KmsKeyId"] == {"Ref": "DataKey"}
    assert re.fullmatch(r'\{"secret_key": "", "webhook_secret": ""\}', secret["SecretString"]), secret["SecretString"]
