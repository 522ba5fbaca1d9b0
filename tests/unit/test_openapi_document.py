"""The shared OpenAPI pieces (billing_lambda.openapi): what a resolver's document says about errors and headers."""

from typing import Any

import pytest
from openapi_spec_validator import validate

from billing.payments import RefundRequest
from billing_lambda.openapi import (
    ERRORS,
    EVERY_ROUTE,
    IDEMPOTENCY_KEY,
    INVALID,
    JSON,
    DocumentedResolver,
    created,
    ok,
    requires,
    responses,
)


def document_of(app: DocumentedResolver) -> dict[str, Any]:
    return dict(app.get_openapi_schema().model_dump(mode="json", by_alias=True, exclude_none=True))


@pytest.fixture
def document() -> dict[str, Any]:
    app = DocumentedResolver()

    @app.get("/things", responses=responses(ok("The things"), *EVERY_ROUTE))
    def things() -> dict[str, list[str]]:
        return {"things": []}

    @app.post(
        "/things/<thing_id>/refunds",
        status_code=201,
        responses=responses(created("The refund"), *EVERY_ROUTE, INVALID),
        openapi_extensions=requires(IDEMPOTENCY_KEY),
    )
    def refund(thing_id: str, request: RefundRequest) -> dict[str, str]:
        return {"thing_id": thing_id}

    return document_of(app)


@pytest.mark.parametrize("status", sorted(ERRORS))
def test_every_error_example_is_an_answer_of_its_documented_shape(status: int) -> None:
    content = ERRORS[status]["content"][JSON]
    for example in content["examples"].values():  # type: ignore[typeddict-item]
        content["model"].model_validate(example["value"])  # type: ignore[typeddict-item]


def test_an_operation_without_input_does_not_document_a_validation_error(document: dict[str, Any]) -> None:
    validate(document)
    assert "422" not in document["paths"]["/things"]["get"]["responses"]
    assert not {"HTTPValidationError", "ValidationError"} & set(document["components"]["schemas"])


def test_a_validation_error_is_documented_in_the_error_shape(document: dict[str, Any]) -> None:
    invalid = document["paths"]["/things/{thing_id}/refunds"]["post"]["responses"]["422"]
    assert invalid["content"][JSON]["schema"] == {"$ref": "#/components/schemas/ValidationErrorResponse"}


def test_a_header_the_handler_requires_is_a_required_header_parameter(document: dict[str, Any]) -> None:
    operation = document["paths"]["/things/{thing_id}/refunds"]["post"]
    assert [(p["name"], p["in"], p["required"]) for p in operation["parameters"]] == [
        ("thing_id", "path", True),
        ("Idempotency-Key", "header", True),
    ]
    assert "x-billing-headers" not in operation
    assert "parameters" not in document["paths"]["/things"]["get"]
