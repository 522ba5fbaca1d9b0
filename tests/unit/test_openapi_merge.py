"""The local server's ``/openapi.json``: the functions' documents merged into one (`local.server.merge_openapi`)."""

from typing import Any

import pytest
from aws_lambda_powertools.event_handler.openapi.exceptions import OpenAPIMergeError
from openapi_spec_validator import validate

from billing_lambda.openapi import EVERY_ROUTE, DocumentedResolver, ok, responses
from local.server import merge_openapi
from local.template import HttpRoute


def function_document(*routes: tuple[str, str]) -> dict[str, Any]:
    """What one function's worker answers for its resolver: a document of ``(method, path)`` routes."""
    app = DocumentedResolver()
    for method, path in routes:
        app.route(path, method.upper(), responses=responses(ok("Done"), *EVERY_ROUTE))(lambda: {"done": True})
    return dict(app.get_openapi_schema().model_dump(mode="json", by_alias=True, exclude_none=True))


def route(method: str, path: str, authorizer: str | None) -> HttpRoute:
    return HttpRoute(method, path, "SomeFunction", authorizer, "Api")


def test_the_functions_routes_info_and_security_are_one_document() -> None:
    merged = merge_openapi([function_document(("GET", "/clients")), function_document(("POST", "/invoices"))])
    validate(merged)
    assert set(merged["paths"]) == {"/clients", "/invoices"}
    assert merged["info"]["title"] == "Time-of-session billing API"
    assert merged["info"]["description"]
    assert merged["security"] == [{"bearerAuth": []}]
    assert merged["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert "ErrorResponse" in merged["components"]["schemas"]


def test_a_route_without_an_authorizer_needs_no_token() -> None:
    documents = [function_document(("GET", "/clients")), function_document(("POST", "/webhooks/stripe"))]
    public = [route("POST", "/webhooks/stripe", None)]
    merged = merge_openapi(documents, public)
    assert merged["paths"]["/webhooks/stripe"]["post"]["security"] == []
    assert "security" not in merged["paths"]["/clients"]["get"]


def test_two_functions_documenting_one_route_is_an_error() -> None:
    documents = [function_document(("GET", "/clients")), function_document(("GET", "/clients"))]
    with pytest.raises(OpenAPIMergeError, match="GET /clients"):
        merge_openapi(documents)
