"""``/openapi.json`` describes the API that is really served: every route of template.yaml and nothing else, the
JWT bearer scheme on every route but the Stripe webhook, the headers handlers require, and every error in the
shape the API answers. That the document lists every status the API answers is checked after every end-to-end
test (``documented_statuses`` in conftest.py) and under generated requests (test_contract_fuzz.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from local.stack import LocalStack
from tests.e2e.conftest import Api, idempotency_key
from tests.e2e.contract import undocumented

REF = "#/components/schemas/"
IDEMPOTENT = {
    ("POST", "/payments"),
    ("POST", "/payments/{payment_id}/refunds"),
    ("POST", "/appointments/{appointment_id}/invoice-and-payment"),
    ("POST", "/portal/payments"),
}
WEBHOOK = ("POST", "/webhooks/stripe")


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }


def schema_of(document: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """The component schema a JSON response refers to."""
    reference = response["content"]["application/json"]["schema"]["$ref"]
    assert reference.startswith(REF), reference
    return dict(document["components"]["schemas"][reference.removeprefix(REF)])


def property_schema(document: dict[str, Any], schema: dict[str, Any], name: str) -> dict[str, Any]:
    found = schema["properties"][name]
    return dict(document["components"]["schemas"][found["$ref"].removeprefix(REF)]) if "$ref" in found else found


def test_the_document_is_valid_openapi_3(openapi_document: dict[str, Any]) -> None:
    validate(openapi_document)
    assert openapi_document["openapi"].startswith("3.")


def test_every_template_route_is_documented_and_nothing_else(
    openapi_document: dict[str, Any], stack: LocalStack
) -> None:
    assert set(operations(openapi_document)) == {(route.method, route.path) for route in stack.template.routes}


def test_every_route_but_the_public_ones_needs_a_bearer_jwt(
    openapi_document: dict[str, Any], stack: LocalStack
) -> None:
    scheme = openapi_document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    assert openapi_document["security"] == [{"bearerAuth": []}]
    public = {(route.method, route.path) for route in stack.template.routes if not route.requires_auth}
    assert public == {WEBHOOK}
    for key, operation in operations(openapi_document).items():
        secured = operation.get("security", openapi_document["security"]) != []
        assert secured == (key not in public), key
        refusals = {"401", "403"} & set(operation["responses"])
        assert refusals == ({"401", "403"} if secured else set()), key


def test_every_error_is_documented_in_the_error_shape(openapi_document: dict[str, Any]) -> None:
    schemas = openapi_document["components"]["schemas"]
    assert not {"HTTPValidationError", "ValidationError"} & set(schemas), "Powertools' 422 is not what we answer"
    for key, operation in operations(openapi_document).items():
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            schema = schema_of(openapi_document, response)
            if status == "401":  # API Gateway's own answer: {"message": "Unauthorized"}
                assert schema["required"] == ["message"], key
                continue
            assert "error" in schema["required"], (key, status)
            error = property_schema(openapi_document, schema, "error")
            assert {"code", "message", "details"} <= set(error["required"]), (key, status)


def examples(document: dict[str, Any]) -> list[tuple[str, dict[str, Any], Any]]:
    """Every example of the document: where it is, the schema it illustrates, and its value."""
    found = []
    for (method, path), operation in operations(document).items():
        for parameter in operation.get("parameters", []):
            if "example" in parameter:
                found.append((f"{method} {path} {parameter['name']}", parameter["schema"], parameter["example"]))
        bodies = [("request", operation.get("requestBody") or {})]
        bodies += [(status, response) for status, response in operation["responses"].items()]
        for label, described in bodies:
            for media in (described.get("content") or {}).values():
                for name, example in (media.get("examples") or {}).items():
                    found.append((f"{method} {path} {label} {name}", media["schema"], example["value"]))
    return found


def test_every_example_matches_its_schema(openapi_document: dict[str, Any]) -> None:
    found = examples(openapi_document)
    assert len(found) > 100
    for where, schema, value in found:
        validator = Draft202012Validator({**schema, "components": openapi_document["components"]})
        problems = [problem.message for problem in validator.iter_errors(value)]
        assert not problems, (where, problems)


def test_every_operation_that_takes_input_documents_its_validation_error(openapi_document: dict[str, Any]) -> None:
    checked_by_handlers = {"Idempotency-Key", "Stripe-Signature"}  # a 400 of their own, never a 422
    for key, operation in operations(openapi_document).items():
        parameters = {p["name"] for p in operation.get("parameters", [])} - checked_by_handlers
        validated = bool(parameters) or ("requestBody" in operation and key != WEBHOOK)
        assert ("422" in operation["responses"]) == validated, key
        if validated:
            schema = schema_of(openapi_document, operation["responses"]["422"])
            details = property_schema(openapi_document, schema, "error")["properties"]["details"]
            assert details["items"]["$ref"] == f"{REF}FieldProblem", key


def test_payments_and_refunds_require_an_idempotency_key(openapi_document: dict[str, Any]) -> None:
    for key, operation in operations(openapi_document).items():
        headers = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "header"}
        if key in IDEMPOTENT:
            header = headers["Idempotency-Key"]
            assert header["required"] is True, key
            assert (header["schema"]["minLength"], header["schema"]["maxLength"]) == (8, 128), key
            assert "400" in operation["responses"], key
        else:
            assert "Idempotency-Key" not in headers, key
    webhook = operations(openapi_document)[WEBHOOK]
    assert [(p["name"], p["required"]) for p in webhook["parameters"]] == [("Stripe-Signature", True)]


def test_charges_and_refunds_the_processor_has_not_finished_are_documented_as_202(
    openapi_document: dict[str, Any],
) -> None:
    accepted = {key: op for key, op in operations(openapi_document).items() if "202" in op["responses"]}
    assert set(accepted) == IDEMPOTENT
    for key, operation in accepted.items():
        assert schema_of(openapi_document, operation["responses"]["202"]) == schema_of(
            openapi_document, operation["responses"]["201"]
        ), key


def test_removing_a_card_is_documented_as_204_without_a_body(openapi_document: dict[str, Any]) -> None:
    for path in ("/clients/{client_id}/cards/{card_id}", "/portal/cards/{card_id}"):
        responses = openapi_document["paths"][path]["delete"]["responses"]
        assert "200" not in responses
        assert not responses["204"].get("content")


def test_a_refund_without_a_body_refunds_everything_refundable(api: Api, openapi_document: dict[str, Any]) -> None:
    refunds = openapi_document["paths"]["/payments/{payment_id}/refunds"]["post"]
    assert not refunds["requestBody"].get("required")
    staff = api.as_practice()
    staff.put("/practice", json={"name": "Refunds", "timezone": "UTC", "invoice_creation": "manual"})
    client_id = staff.post("/clients", json={"first_name": "Ada", "last_name": "Byron"}).json()["client_id"]
    cash = {"client_id": client_id, "amount_cents": 4200, "method": "cash"}
    payment = staff.post("/payments", json=cash, headers=idempotency_key()).json()
    refund = staff.post(f"/payments/{payment['payment_id']}/refunds", headers=idempotency_key())
    assert refund.status_code == 201, refund.text
    assert (refund.json()["amount_cents"], refund.json()["status"]) == (4200, "succeeded")


@pytest.mark.parametrize("status", [200, 418])
def test_an_answer_is_checked_against_what_its_operation_documents(
    api: Api, stack: LocalStack, openapi_document: dict[str, Any], status: int
) -> None:
    """The check every end-to-end test ends with: what the server answered, against the document (here one that
    lists 418 instead of 200 for ``GET /practice``, which must be caught)."""
    document = copy.deepcopy(openapi_document)
    responses = document["paths"]["/practice"]["get"]["responses"]
    responses[str(status)] = responses.pop("200")
    mark = stack.server.served.mark()
    staff = api.as_practice()
    staff.put("/practice", json={"name": "Served", "timezone": "UTC", "invoice_creation": "manual"})
    assert staff.get("/practice").status_code == 200
    expected = [] if status == 200 else [("GET", "/practice", 200)]
    assert undocumented(stack.server.served.since(mark), document) == expected
