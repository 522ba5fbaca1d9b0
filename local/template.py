"""Read ``template.yaml`` the way the local stack needs it.

`load_template` parses the SAM template (CloudFormation short tags included) and exposes what the
local stack serves and creates: functions, HTTP routes, SQS event sources, tables, buckets, queues,
secrets and schedule groups; and, for the IAM audit, what each function's execution role may do
(`Template.execution_role_statements`) and which key encrypts a resource (`Template.encryption_key`).
`Resolver` turns intrinsic functions into the local physical values described in docs/architecture.md
("Local resource resolution"); `Resolver.for_policies` into the values IAM policies see.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import yaml

LOCAL_ACCOUNT_ID = "123456789012"
LOCAL_STACK_NAME = "local"
DEFAULT_REGION = "us-east-1"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEMPLATE = REPO_ROOT / "template.yaml"

FUNCTION_TYPES = ("AWS::Serverless::Function",)
TABLE_TYPES = ("AWS::DynamoDB::Table", "AWS::Serverless::SimpleTable")
QUEUE_TYPE = "AWS::SQS::Queue"
BUCKET_TYPE = "AWS::S3::Bucket"
SECRET_TYPE = "AWS::SecretsManager::Secret"
SCHEDULE_GROUP_TYPE = "AWS::Scheduler::ScheduleGroup"
SCHEDULE_TYPE = "AWS::Scheduler::Schedule"
HTTP_API_TYPE = "AWS::Serverless::HttpApi"
ROLE_TYPE = "AWS::IAM::Role"
KMS_KEY_TYPE = "AWS::KMS::Key"
KMS_ALIAS_TYPE = "AWS::KMS::Alias"
SNS_TOPIC_TYPE = "AWS::SNS::Topic"
IMPLICIT_HTTP_API = "ServerlessHttpApi"


class TemplateError(ValueError):
    """The template is missing something the local stack cannot do without."""


# ---------------------------------------------------------------- YAML with CloudFormation tags


class _CloudFormationLoader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation short tags (``!Ref``...) into their long forms."""


def _construct_short_tag(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> Any:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        # "Resource.Attr.Sub" -> ["Resource", "Attr.Sub"]: only the first dot separates the resource.
        resource, _, attribute = value.partition(".")
        return {"Fn::GetAtt": [resource, attribute]}
    return {f"Fn::{tag_suffix}": value}


_CloudFormationLoader.add_multi_constructor("!", _construct_short_tag)


def parse_template_text(text: str) -> dict[str, Any]:
    """Parse template YAML (or JSON) text into plain data with intrinsics in their long forms."""
    document = yaml.load(text, Loader=_CloudFormationLoader)  # a SafeLoader subclass
    if not isinstance(document, dict):
        raise TemplateError("template is not a mapping")
    return document


# ---------------------------------------------------------------- what the template declares


@dataclass(frozen=True)
class FunctionSpec:
    """A SAM function: where its code is and how Lambda would call it."""

    logical_id: str
    code_dir: Path
    handler_module: str
    handler_function: str
    timeout: int
    memory_size: int
    environment: Mapping[str, Any]

    @property
    def handler_file(self) -> Path:
        """The file Lambda imports for ``Handler: module.function``."""
        return self.code_dir.joinpath(*self.handler_module.split(".")).with_suffix(".py")


@dataclass(frozen=True)
class HttpRoute:
    """An ``HttpApi`` event: ``METHOD /path/{param}`` served by one function."""

    method: str
    path: str
    function_id: str
    authorizer: str | None
    api_id: str

    @property
    def route_key(self) -> str:
        """The API Gateway route key, e.g. ``GET /clients/{client_id}``."""
        return f"{self.method} {self.path}"

    @property
    def requires_auth(self) -> bool:
        """True unless the route says ``Auth.Authorizer: NONE`` (or its API has no authorizer)."""
        return self.authorizer is not None


@dataclass(frozen=True)
class SqsEventSource:
    """An ``SQS`` event: the queue a worker function consumes."""

    function_id: str
    queue_id: str
    batch_size: int
    report_batch_item_failures: bool


@dataclass(frozen=True)
class TableSpec:
    """A DynamoDB table's keys, indexes and TTL (raw template values, intrinsics unresolved)."""

    logical_id: str
    key_schema: list[dict[str, Any]]
    attribute_definitions: list[dict[str, Any]]
    global_secondary_indexes: list[dict[str, Any]] = field(default_factory=list)
    local_secondary_indexes: list[dict[str, Any]] = field(default_factory=list)
    ttl_attribute: str | None = None
    stream_specification: dict[str, Any] | None = None


@dataclass(frozen=True)
class QueueSpec:
    """An SQS queue; ``dlq_id`` is the logical id its RedrivePolicy points at."""

    logical_id: str
    properties: Mapping[str, Any]
    dlq_id: str | None
    max_receive_count: Any

    @property
    def fifo(self) -> bool:
        """FIFO queues need the ``.fifo`` suffix and carry MessageGroupId."""
        return str(self.properties.get("FifoQueue", "false")).lower() == "true"


@dataclass(frozen=True)
class ResourceSpec:
    """Any other resource the local stack creates (bucket, secret, schedule group, schedule)."""

    logical_id: str
    properties: Mapping[str, Any]


@dataclass
class Template:
    """A loaded SAM template and the local stack's view of it (computed once: treat it as read-only)."""

    path: Path
    document: dict[str, Any]

    @property
    def root(self) -> Path:
        """The directory that ``CodeUri`` paths are relative to."""
        return self.path.parent

    @cached_property
    def resources(self) -> dict[str, dict[str, Any]]:
        """All resources, by logical id."""
        resources = self.document.get("Resources") or {}
        return {key: value for key, value in resources.items() if isinstance(value, dict)}

    @cached_property
    def parameters(self) -> dict[str, dict[str, Any]]:
        """Template parameters, by name."""
        return dict(self.document.get("Parameters") or {})

    @cached_property
    def conditions(self) -> dict[str, Any]:
        """Template conditions, by name."""
        return dict(self.document.get("Conditions") or {})

    @cached_property
    def mappings(self) -> dict[str, Any]:
        """Template mappings, by name."""
        return dict(self.document.get("Mappings") or {})

    def globals_for(self, section: str) -> dict[str, Any]:
        """The ``Globals`` section for ``Function``, ``HttpApi``..."""
        return dict((self.document.get("Globals") or {}).get(section) or {})

    def resource_type(self, logical_id: str) -> str | None:
        """The ``Type`` of a resource, or None when the template does not declare it."""
        resource = self.resources.get(logical_id)
        return resource.get("Type") if resource else None

    def of_type(self, *types: str) -> dict[str, dict[str, Any]]:
        """Resources of the given types, by logical id, with their Properties."""
        return {
            logical_id: dict(resource.get("Properties") or {})
            for logical_id, resource in self.resources.items()
            if resource.get("Type") in types
        }

    @cached_property
    def functions(self) -> dict[str, FunctionSpec]:
        """Zip-packaged SAM functions with a ``CodeUri`` folder, by logical id."""
        defaults = self.globals_for("Function")
        specs: dict[str, FunctionSpec] = {}
        for logical_id, props in self.of_type(*FUNCTION_TYPES).items():
            code_uri = props.get("CodeUri", defaults.get("CodeUri"))
            handler = props.get("Handler", defaults.get("Handler"))
            if not isinstance(code_uri, str) or not isinstance(handler, str):
                continue  # inline code, images and S3 packages cannot run in-process
            module, _, function = handler.rpartition(".")
            if not module:
                continue  # not a Python "module.function" handler
            environment = {
                **_variables(defaults.get("Environment")),
                **_variables(props.get("Environment")),
            }
            specs[logical_id] = FunctionSpec(
                logical_id=logical_id,
                code_dir=(self.root / code_uri).resolve(),
                handler_module=module,
                handler_function=function,
                timeout=_number(props.get("Timeout", defaults.get("Timeout")), 3),
                memory_size=_number(props.get("MemorySize", defaults.get("MemorySize")), 128),
                environment=environment,
            )
        return specs

    def _http_api_default_authorizer(self, api_id: str) -> str | None:
        auth = dict(self.globals_for("HttpApi").get("Auth") or {})
        api = self.resources.get(api_id)
        if api and api.get("Type") == HTTP_API_TYPE:
            auth.update((api.get("Properties") or {}).get("Auth") or {})
        default = auth.get("DefaultAuthorizer")
        return default if isinstance(default, str) and default != "NONE" else None

    @cached_property
    def routes(self) -> list[HttpRoute]:
        """Every ``HttpApi`` event of every function, in template order."""
        routes: list[HttpRoute] = []
        for function_id, props in self.of_type(*FUNCTION_TYPES).items():
            for event in (props.get("Events") or {}).values():
                if not isinstance(event, dict) or event.get("Type") != "HttpApi":
                    continue
                event_props = event.get("Properties") or {}
                api_ref = event_props.get("ApiId")
                api_id = api_ref.get("Ref") if isinstance(api_ref, dict) else None
                api_id = api_id or IMPLICIT_HTTP_API
                authorizer = (event_props.get("Auth") or {}).get("Authorizer")
                if authorizer is None:
                    authorizer = self._http_api_default_authorizer(api_id)
                routes.append(
                    HttpRoute(
                        method=str(event_props.get("Method", "ANY")).upper(),
                        path=str(event_props.get("Path", "/{proxy+}")),
                        function_id=function_id,
                        authorizer=None if authorizer == "NONE" else authorizer,
                        api_id=api_id,
                    )
                )
        return routes

    @cached_property
    def sqs_event_sources(self) -> list[SqsEventSource]:
        """Every ``SQS`` event whose queue is declared in this template."""
        sources: list[SqsEventSource] = []
        for function_id, props in self.of_type(*FUNCTION_TYPES).items():
            for event in (props.get("Events") or {}).values():
                if not isinstance(event, dict) or event.get("Type") != "SQS":
                    continue
                event_props = event.get("Properties") or {}
                queue_id = referenced_resource(event_props.get("Queue"))
                if queue_id is None or self.resource_type(queue_id) != QUEUE_TYPE:
                    continue
                if str(event_props.get("Enabled", "true")).lower() == "false":
                    continue
                response_types = event_props.get("FunctionResponseTypes") or []
                sources.append(
                    SqsEventSource(
                        function_id=function_id,
                        queue_id=queue_id,
                        batch_size=int(event_props.get("BatchSize", 10)),
                        report_batch_item_failures="ReportBatchItemFailures" in response_types,
                    )
                )
        return sources

    @cached_property
    def tables(self) -> list[TableSpec]:
        """DynamoDB tables (``AWS::Serverless::SimpleTable`` expanded to its key)."""
        tables: list[TableSpec] = []
        for logical_id, props in self.of_type(*TABLE_TYPES).items():
            if self.resource_type(logical_id) == "AWS::Serverless::SimpleTable":
                primary = props.get("PrimaryKey") or {"Name": "id", "Type": "String"}
                kind = {"String": "S", "Number": "N", "Binary": "B"}[primary.get("Type", "String")]
                tables.append(
                    TableSpec(
                        logical_id=logical_id,
                        key_schema=[{"AttributeName": primary["Name"], "KeyType": "HASH"}],
                        attribute_definitions=[{"AttributeName": primary["Name"], "AttributeType": kind}],
                    )
                )
                continue
            ttl = props.get("TimeToLiveSpecification") or {}
            ttl_enabled = str(ttl.get("Enabled", "false")).lower() == "true"
            tables.append(
                TableSpec(
                    logical_id=logical_id,
                    key_schema=list(props.get("KeySchema") or []),
                    attribute_definitions=list(props.get("AttributeDefinitions") or []),
                    global_secondary_indexes=list(props.get("GlobalSecondaryIndexes") or []),
                    local_secondary_indexes=list(props.get("LocalSecondaryIndexes") or []),
                    ttl_attribute=ttl.get("AttributeName") if ttl_enabled else None,
                    stream_specification=props.get("StreamSpecification"),
                )
            )
        return tables

    @cached_property
    def queues(self) -> list[QueueSpec]:
        """SQS queues, dead-letter queues before the queues that redrive into them."""
        specs = {}
        for logical_id, props in self.of_type(QUEUE_TYPE).items():
            redrive = props.get("RedrivePolicy") or {}
            specs[logical_id] = QueueSpec(
                logical_id=logical_id,
                properties=props,
                dlq_id=referenced_resource(redrive.get("deadLetterTargetArn")),
                max_receive_count=redrive.get("maxReceiveCount"),
            )
        ordered: list[QueueSpec] = []

        def visit(spec: QueueSpec, path: tuple[str, ...]) -> None:
            if spec in ordered or spec.logical_id in path:
                return
            if spec.dlq_id in specs:
                visit(specs[spec.dlq_id], (*path, spec.logical_id))
            ordered.append(spec)

        for spec in specs.values():
            visit(spec, ())
        return ordered

    @cached_property
    def buckets(self) -> list[ResourceSpec]:
        """S3 buckets."""
        return [ResourceSpec(key, props) for key, props in self.of_type(BUCKET_TYPE).items()]

    @cached_property
    def secrets(self) -> list[ResourceSpec]:
        """Secrets Manager secrets."""
        return [ResourceSpec(key, props) for key, props in self.of_type(SECRET_TYPE).items()]

    @cached_property
    def schedule_groups(self) -> list[ResourceSpec]:
        """EventBridge Scheduler schedule groups."""
        groups = self.of_type(SCHEDULE_GROUP_TYPE)
        return [ResourceSpec(key, props) for key, props in groups.items()]

    @cached_property
    def schedules(self) -> list[ResourceSpec]:
        """EventBridge Scheduler schedules declared statically (most are created at run time)."""
        return [ResourceSpec(key, props) for key, props in self.of_type(SCHEDULE_TYPE).items()]

    def function_property(self, function_id: str, name: str) -> Any:
        """A function's property, or its ``Globals`` default, as SAM reads it."""
        properties = self.resources[function_id].get("Properties") or {}
        return properties.get(name, self.globals_for("Function").get(name))

    def execution_role_statements(self, function_id: str) -> list[dict[str, Any]]:
        """The IAM statements of ``function_id``'s execution role, intrinsics unresolved.

        A ``Role`` of the template: its inline policies (SAM adds nothing to a role it did not make). Else the
        role SAM generates: ``Policies`` (inline statements, and SAM policy templates expanded as SAM expands
        them), plus what SAM adds for a ``DeadLetterQueue``, an ``EventInvokeConfig`` destination and an SQS
        event (the managed AWSLambdaSQSQueueExecutionRole, on every queue). Managed policies named in
        ``Policies`` are not known here (the billing functions name none).
        """
        role = self.function_property(function_id, "Role")
        if role is not None:
            return self.role_statements(referenced_resource(role))
        statements = [
            statement
            for policy in self.function_property(function_id, "Policies") or []
            for statement in _policy_statements(policy)
        ]
        return statements + self._sam_added_statements(function_id)

    def role_statements(self, role_id: str | None) -> list[dict[str, Any]]:
        """The statements of a template role's inline policies (none for a role the template does not declare)."""
        if role_id is None or self.resource_type(role_id) != ROLE_TYPE:
            return []  # a role from outside the template: nothing is known about it
        policies = (self.resources[role_id].get("Properties") or {}).get("Policies") or []
        return [statement for policy in policies for statement in _policy_statements(policy.get("PolicyDocument"))]

    def _sam_added_statements(self, function_id: str) -> list[dict[str, Any]]:
        """What SAM puts in the role it generates for failure destinations and SQS events (samtranslator's
        ``dead_letter_queue_policy_actions``, ``_add_event_invoke_managed_policy`` and ``SQS.get_policy_arn``)."""
        added: list[dict[str, Any]] = []
        dead_letters = self.function_property(function_id, "DeadLetterQueue") or {}
        if dead_letters.get("TargetArn") is not None:
            action = _DESTINATION_ACTIONS.get(dead_letters.get("Type", ""), "sqs:SendMessage")
            added.append({"Effect": "Allow", "Action": action, "Resource": dead_letters["TargetArn"]})
        destinations = (self.function_property(function_id, "EventInvokeConfig") or {}).get("DestinationConfig") or {}
        for outcome in ("OnSuccess", "OnFailure"):
            destination = destinations.get(outcome) or {}
            sends = _DESTINATION_ACTIONS.get(destination.get("Type", ""))
            if sends and destination.get("Destination") is not None:
                resource = destination["Destination"]
                if destination["Type"] == "S3Bucket":
                    resource = {"Fn::Join": ["/", [resource, "*"]]}
                added.append({"Effect": "Allow", "Action": sends, "Resource": resource})
        if any(source.function_id == function_id for source in self.sqs_event_sources):
            added.append({"Effect": "Allow", "Action": list(SQS_POLLER_ACTIONS), "Resource": "*"})
        return added

    def encryption_key(self, logical_id: str) -> str | None:
        """The template KMS key that encrypts a table, queue, bucket or secret at rest, by logical id.

        None when AWS's own keys do it (no setting, ``alias/aws/...``, SSE-S3): those need no IAM grant.
        """
        properties = self.resources.get(logical_id, {}).get("Properties") or {}
        key = referenced_resource(_key_setting(self.resource_type(logical_id), properties))
        if self.resource_type(key or "") == KMS_ALIAS_TYPE:
            key = referenced_resource((self.resources[str(key)].get("Properties") or {}).get("TargetKeyId"))
        return key if self.resource_type(key or "") == KMS_KEY_TYPE else None


def _number(value: Any, default: int) -> int:
    """A literal integer property, or Lambda's default when absent or computed by an intrinsic."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _variables(environment: Any) -> dict[str, Any]:
    if not isinstance(environment, dict):
        return {}
    variables = environment.get("Variables")
    return dict(variables) if isinstance(variables, dict) else {}


def referenced_resource(value: Any) -> str | None:
    """The logical id behind ``!GetAtt X.Arn`` or ``!Ref X``, if that is what ``value`` is."""
    if isinstance(value, dict):
        if isinstance(value.get("Fn::GetAtt"), list) and value["Fn::GetAtt"]:
            return str(value["Fn::GetAtt"][0])
        if isinstance(value.get("Ref"), str):
            return str(value["Ref"])
    return None


# What SAM grants a generated role for each kind of failure destination.
_DESTINATION_ACTIONS = {
    "SQS": "sqs:SendMessage",
    "SNS": "sns:Publish",
    "Lambda": "lambda:InvokeFunction",
    "EventBridge": "events:PutEvents",
    "S3Bucket": "s3:PutObject",
}
# What Lambda's SQS event source mapping does with the function's role.
SQS_POLLER_ACTIONS = ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes")


def _key_setting(resource_type: str | None, properties: Mapping[str, Any]) -> Any:
    """The property in which a table, queue, secret or bucket names its KMS key (None: AWS's own key)."""
    if resource_type in TABLE_TYPES:
        return (properties.get("SSESpecification") or {}).get("KMSMasterKeyId")
    if resource_type == QUEUE_TYPE:
        return properties.get("KmsMasterKeyId")
    if resource_type == SECRET_TYPE:
        return properties.get("KmsKeyId")
    if resource_type == BUCKET_TYPE:
        rules = (properties.get("BucketEncryption") or {}).get("ServerSideEncryptionConfiguration") or [{}]
        default = rules[0].get("ServerSideEncryptionByDefault") or {}
        return default.get("KMSMasterKeyID") if str(default.get("SSEAlgorithm")).startswith("aws:kms") else None
    return None


def _policy_statements(policy: Any) -> list[dict[str, Any]]:
    """The statements of one ``Policies`` entry: a policy document, or a SAM policy template (expanded)."""
    if not isinstance(policy, dict):
        return []  # a managed policy's name or ARN
    if len(policy) == 1 and _sam_policy_templates().has(next(iter(policy))):
        name, parameters = next(iter(policy.items()))
        policy = _sam_policy_templates().convert(name, parameters or {})
    statements = policy.get("Statement", [])
    return [statement for statement in _as_list(statements) if isinstance(statement, dict)]


@cache
def _sam_policy_templates() -> Any:
    """SAM's own policy templates (``SQSPollerPolicy``...), the same expansion ``sam deploy`` does."""
    from samtranslator.policy_template_processor.processor import PolicyTemplatesProcessor

    return PolicyTemplatesProcessor(PolicyTemplatesProcessor.get_default_policy_templates_json())


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def load_template(path: str | Path | None = None) -> Template:
    """Load ``template.yaml`` (the repository's by default)."""
    template_path = Path(path) if path else DEFAULT_TEMPLATE
    text = template_path.read_text(encoding="utf-8")
    return Template(path=template_path.resolve(), document=parse_template_text(text))


# ---------------------------------------------------------------- local physical values


class _NoValue:
    """``AWS::NoValue``: the property is dropped from its mapping or list."""

    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()
_SUB_VARIABLE = re.compile(r"\$\{([^}]+)\}")

# AWS service prefix for ARNs of resource types whose ARN is service:region:account:name.
_ARN_SERVICES = {
    "AWS::SNS::Topic": "sns",
    "AWS::Events::EventBus": "events",
    "AWS::StepFunctions::StateMachine": "states",
}


class Resolver:
    """Resolve CloudFormation intrinsics to the local stack's physical values.

    Tables and queues are named after their logical id, buckets after the lower-cased logical id,
    functions' ARNs carry the logical id, ``Ref`` of a queue is its URL (from ``queue_urls`` once
    the queue exists in moto), and every ARN is in account 123456789012 and ``region``.
    """

    def __init__(
        self,
        template: Template,
        region: str = DEFAULT_REGION,
        *,
        queue_urls: Mapping[str, str] | None = None,
        parameters: Mapping[str, str] | None = None,
        sqs_endpoint: str | None = None,
    ) -> None:
        self.template = template
        self.region = region
        self.account_id = LOCAL_ACCOUNT_ID
        self.queue_urls = dict(queue_urls or {})
        self.parameter_overrides = dict(parameters or {})
        self.sqs_endpoint = sqs_endpoint

    # -- names and ARNs

    def physical_name(self, logical_id: str) -> str:
        """The name the resource has in the local stack."""
        resource_type = self.template.resource_type(logical_id)
        if resource_type == BUCKET_TYPE:
            return logical_id.lower()  # S3 bucket names must be lower case
        if resource_type == QUEUE_TYPE:
            props = self.template.resources[logical_id].get("Properties") or {}
            fifo = str(self.resolve(props.get("FifoQueue", False))).lower() == "true"
            return f"{logical_id}.fifo" if fifo else logical_id
        if resource_type == SECRET_TYPE:
            name = (self.template.resources[logical_id].get("Properties") or {}).get("Name")
            return str(self.resolve(name)) if name is not None else logical_id
        return logical_id

    def arn(self, logical_id: str) -> str:
        """The ARN of a resource, in the service its type belongs to."""
        name = self.physical_name(logical_id)
        region, account = self.region, self.account_id
        resource_type = self.template.resource_type(logical_id) or ""
        if resource_type in FUNCTION_TYPES or resource_type == "AWS::Lambda::Function":
            return self.function_arn(logical_id)
        if resource_type in (*TABLE_TYPES, "AWS::DynamoDB::GlobalTable"):
            return f"arn:aws:dynamodb:{region}:{account}:table/{name}"
        if resource_type == QUEUE_TYPE:
            return f"arn:aws:sqs:{region}:{account}:{name}"
        if resource_type == BUCKET_TYPE:
            return f"arn:aws:s3:::{name}"
        if resource_type == SECRET_TYPE:
            return f"arn:aws:secretsmanager:{region}:{account}:secret:{name}"
        if resource_type == SCHEDULE_GROUP_TYPE:
            return f"arn:aws:scheduler:{region}:{account}:schedule-group/{name}"
        if resource_type == "AWS::IAM::Role":
            return f"arn:aws:iam::{account}:role/{name}"
        if resource_type == "AWS::KMS::Key":
            return f"arn:aws:kms:{region}:{account}:key/{name}"
        if resource_type == "AWS::Logs::LogGroup":
            return f"arn:aws:logs:{region}:{account}:log-group:{name}:*"
        if resource_type == "AWS::Cognito::UserPool":
            return f"arn:aws:cognito-idp:{region}:{account}:userpool/{name}"
        if resource_type == "AWS::Serverless::LayerVersion":
            return f"arn:aws:lambda:{region}:{account}:layer:{name}:1"
        service = _ARN_SERVICES.get(resource_type)
        if service is None:
            parts = resource_type.split("::")
            service = parts[1].lower() if len(parts) == 3 else "local"
        return f"arn:aws:{service}:{region}:{account}:{name}"

    def for_policies(self) -> Resolver:
        """A resolver for IAM policy documents: ``Ref`` of a secret or a topic is its ARN, as in AWS (the
        functions' environments keep the names the local stack looks them up by)."""
        return PolicyResolver(
            self.template,
            self.region,
            queue_urls=self.queue_urls,
            parameters=self.parameter_overrides,
            sqs_endpoint=self.sqs_endpoint,
        )

    def function_arn(self, function_id: str) -> str:
        """``arn:aws:lambda:<region>:123456789012:function:<LogicalId>``."""
        return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{function_id}"

    def function_id_for_arn(self, arn: str) -> str | None:
        """The template function a Lambda ARN (optionally qualified) points at, if any."""
        match = re.match(r"^arn:aws[\w-]*:lambda:[^:]*:[^:]*:function:([^:]+)(:.*)?$", arn)
        name = match.group(1) if match else arn
        return name if name in self.template.functions else None

    def queue_url(self, logical_id: str) -> str:
        """The queue URL moto gave the queue, or the one it will give."""
        if logical_id in self.queue_urls:
            return self.queue_urls[logical_id]
        base = self.sqs_endpoint or f"https://sqs.{self.region}.amazonaws.com"
        return f"{base}/{self.account_id}/{self.physical_name(logical_id)}"

    # -- intrinsics

    def pseudo_parameter(self, name: str) -> Any:
        """``AWS::Region`` and friends, for the local stack."""
        values: dict[str, Any] = {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account_id,
            "AWS::StackName": LOCAL_STACK_NAME,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": (
                f"arn:aws:cloudformation:{self.region}:{self.account_id}"
                f":stack/{LOCAL_STACK_NAME}/00000000-0000-0000-0000-000000000000"
            ),
            "AWS::NotificationARNs": [],
            "AWS::NoValue": NO_VALUE,
        }
        if name not in values:
            raise TemplateError(f"unknown pseudo parameter {name}")
        return values[name]

    def ref(self, name: str) -> Any:
        """``Ref``: parameters, pseudo parameters and resources."""
        if name.startswith("AWS::"):
            return self.pseudo_parameter(name)
        if name in self.parameter_overrides:
            return self.parameter_overrides[name]
        if name in self.template.parameters:
            default = self.template.parameters[name].get("Default")
            return "" if default is None else self.resolve(default)
        resource_type = self.template.resource_type(name)
        if resource_type == QUEUE_TYPE:
            return self.queue_url(name)
        if resource_type == "AWS::Serverless::LayerVersion":
            return self.arn(name)
        # Tables, buckets, groups, functions, roles, secrets: Ref is the name; unknown: the id.
        return self.physical_name(name)

    def get_att(self, logical_id: str, attribute: str) -> Any:
        """``Fn::GetAtt`` for the attributes the billing template uses (others: the logical id)."""
        resource_type = self.template.resource_type(logical_id)
        name = self.physical_name(logical_id)
        if attribute == "Arn":
            return self.arn(logical_id)
        if resource_type == QUEUE_TYPE and attribute == "QueueUrl":
            return self.queue_url(logical_id)
        if resource_type == QUEUE_TYPE and attribute == "QueueName":
            return name
        if resource_type in TABLE_TYPES and attribute == "StreamArn":
            return f"{self.arn(logical_id)}/stream/1970-01-01T00:00:00.000"
        if resource_type == BUCKET_TYPE and attribute in ("DomainName", "RegionalDomainName"):
            return f"{name}.s3.amazonaws.com"
        if resource_type == "AWS::Cognito::UserPool" and attribute == "ProviderURL":
            return f"https://cognito-idp.{self.region}.amazonaws.com/{name}"
        return logical_id

    def condition(self, name: str) -> bool:
        """Evaluate a named template condition."""
        if name not in self.template.conditions:
            raise TemplateError(f"unknown condition {name}")
        return bool(self.resolve(self.template.conditions[name]))

    def resolve(self, value: Any) -> Any:
        """Resolve every intrinsic inside ``value`` (dicts and lists are copied, not mutated)."""
        if isinstance(value, list):
            items = [self.resolve(item) for item in value]
            return [item for item in items if item is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, argument), *_ = value.items()
            if key == "Ref":
                return self.ref(str(argument))
            if key == "Condition" and isinstance(argument, str):
                return self.condition(argument)
            if key.startswith("Fn::"):
                return self._intrinsic(key, argument)
        resolved = {key: self.resolve(item) for key, item in value.items()}
        return {key: item for key, item in resolved.items() if item is not NO_VALUE}

    def _intrinsic(self, key: str, argument: Any) -> Any:
        if key == "Fn::GetAtt":
            if isinstance(argument, str):
                argument = argument.split(".", 1)
            logical_id, attribute = (self.resolve(part) for part in argument)
            return self.get_att(str(logical_id), str(attribute))
        if key == "Fn::Sub":
            return self._sub(argument)
        if key == "Fn::Join":
            delimiter, items = argument
            return str(delimiter).join(str(item) for item in self._as_list(items))
        if key == "Fn::Select":
            index, items = argument
            return self._as_list(items)[int(self.resolve(index))]
        if key == "Fn::Split":
            delimiter, text = argument
            return str(self.resolve(text)).split(str(delimiter))
        if key == "Fn::If":
            condition, when_true, when_false = argument
            return self.resolve(when_true if self.condition(condition) else when_false)
        if key == "Fn::Equals":
            left, right = (self.resolve(item) for item in argument)
            return str(left) == str(right)
        if key == "Fn::Not":
            return not self.resolve(argument[0])
        if key == "Fn::And":
            return all(self.resolve(item) for item in argument)
        if key == "Fn::Or":
            return any(self.resolve(item) for item in argument)
        if key == "Fn::FindInMap":
            map_name, top, second = (self.resolve(item) for item in argument[:3])
            return self.resolve(self.template.mappings[map_name][top][second])
        if key == "Fn::Base64":
            return base64.b64encode(str(self.resolve(argument)).encode()).decode()
        if key == "Fn::ImportValue":
            return str(self.resolve(argument))  # no other stacks locally: the export name
        if key == "Fn::GetAZs":
            return [f"{self.region}{zone}" for zone in "abc"]
        if key == "Fn::ToJsonString":
            return json.dumps(self.resolve(argument), separators=(",", ":"))
        raise TemplateError(f"{key} is not supported by the local stack")

    def _as_list(self, items: Any) -> list[Any]:
        resolved = self.resolve(items)
        return resolved if isinstance(resolved, list) else [resolved]

    def _sub(self, argument: Any) -> str:
        if isinstance(argument, list):
            text, variables = argument[0], self.resolve(argument[1] if len(argument) > 1 else {})
        else:
            text, variables = argument, {}

        def replace(match: re.Match[str]) -> str:
            expression = match.group(1)
            if expression.startswith("!"):
                return "${" + expression[1:] + "}"  # ${!Literal} escapes the substitution
            if expression in variables:
                return str(variables[expression])
            if "." in expression and not expression.startswith("AWS::"):
                logical_id, attribute = expression.split(".", 1)
                return str(self.get_att(logical_id, attribute))
            return str(self.ref(expression))

        return _SUB_VARIABLE.sub(replace, str(text))

    # -- functions

    def function_environment(self, function_id: str) -> dict[str, str]:
        """A function's environment (Globals merged with its own), resolved to strings."""
        spec = self.template.functions[function_id]
        environment: dict[str, str] = {}
        for name, value in spec.environment.items():
            resolved = self.resolve(value)
            if resolved is NO_VALUE:
                continue
            if isinstance(resolved, bool):
                environment[name] = "true" if resolved else "false"
            else:
                environment[name] = str(resolved)
        return environment


class PolicyResolver(Resolver):
    """`Resolver` for IAM policies: where CloudFormation's ``Ref`` is an ARN (secrets, topics), so is this one's."""

    def ref(self, name: str) -> Any:
        """``Ref``, with ARNs for the resource types whose ``Ref`` is their ARN."""
        if self.template.resource_type(name) in (SECRET_TYPE, SNS_TOPIC_TYPE):
            return self.arn(name)
        return super().ref(name)
