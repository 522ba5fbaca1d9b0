"""Input rules (docs/api.md): visible text, strict and bounded instants and dates, IANA region zones, and the
edge's refusal of bodies a parser could choke on, before any route runs."""

import base64
import importlib
import inspect
import json
import pkgutil
import types
import typing
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import available_timezones

import pytest
from pydantic import TypeAdapter, ValidationError

import billing
from billing.clients import ClientDetails
from billing.localtime import TimezoneName
from billing.payments import PaymentRequest
from billing.portal import PortalPaymentRequest
from billing.schema import (
    BirthDate,
    LongText,
    Name,
    RequestModel,
    ServiceDate,
    ServiceInstant,
)
from billing_lambda.http import (
    MAX_BODY_BYTES,
    MAX_JSON_DEPTH,
    MAX_NUMBER_CHARACTERS,
    build_resolver,
    portal_client,
    resolve,
)

# --- every request model -----------------------------------------------------------------------------------


def _request_models() -> list[type[RequestModel]]:
    """Every body a caller sends (a stored record that extends one, e.g. Client, ignores extra fields instead)."""
    found: set[type[RequestModel]] = set()
    for info in pkgutil.iter_modules(billing.__path__):
        module = importlib.import_module(f"billing.{info.name}")
        found |= {obj for _, obj in inspect.getmembers(module, inspect.isclass) if issubclass(obj, RequestModel)}
    return sorted((m for m in found if m.model_config.get("extra") == "forbid"), key=lambda m: m.__name__)


def _plain_types(annotation: object) -> set[object]:
    """The plain types behind Optional/Union/Annotated, and a list's item types as ``list[...]``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _plain_types(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_plain_types(a) for a in typing.get_args(annotation)))
    if origin is list:
        return {list[item] for item in _plain_types(typing.get_args(annotation)[0])}  # type: ignore[valid-type]
    return {annotation}


Field = tuple[type[RequestModel], str]


def _fields_of(kinds: set[object]) -> list[Field]:
    return [
        (model, name)
        for model in _request_models()
        for name, field in model.model_fields.items()
        if _plain_types(field.annotation) & kinds
    ]


def _accepts(field: Field, value: Any) -> bool:
    """Whether the field takes ``value`` as its model would (the model's trimming included)."""
    model, name = field
    info = model.model_fields[name]
    annotation = typing.Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
    adapter: TypeAdapter[Any] = TypeAdapter(annotation, config=model.model_config)
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


def _name(field: Field) -> str:
    return f"{field[0].__name__}.{field[1]}"


TEXT_FIELDS = _fields_of({str, list[str]})
TIME_FIELDS = _fields_of({date, datetime})


def test_the_request_models_are_all_found() -> None:
    names = {model.__name__ for model in _request_models()}
    assert {"ClientDetails", "PracticeSettings", "AppointmentRequest", "PaymentRequest", "DateRange"} <= names
    assert len(TEXT_FIELDS) > 20 and len(TIME_FIELDS) >= 3


@pytest.mark.parametrize("hidden", ["\x00", "\x1b", "\n", "\x7f", "\x85", "\u2028", "\u202e", "\u2066", "\ud800"])
@pytest.mark.parametrize("field", TEXT_FIELDS, ids=_name)
def test_no_text_field_of_any_request_accepts_a_hidden_character(field: Field, hidden: str) -> None:
    value = f"Ada{hidden}Byron"
    probe = [value] if list[str] in _plain_types(field[0].model_fields[field[1]].annotation) else value
    assert not _accepts(field, probe)


@pytest.mark.parametrize("field", TIME_FIELDS, ids=_name)
@pytest.mark.parametrize(
    "value",
    [0, 1_699_920_000, "1699920000", 1.5, "0001-01-01", "9999-12-31", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"],
)
def test_no_date_or_instant_field_accepts_a_number_or_a_far_date(field: Field, value: object) -> None:
    assert not _accepts(field, value)


@pytest.mark.parametrize(
    "text",
    ["Zoë O'Brien-Łukasz", "José (Pepe) Núñez", "שרה\u200f 2", "محمد", "山田 太郎", "Family 👨\u200d👩\u200d👧"],
)
def test_visible_text_in_any_script_is_kept(text: str) -> None:
    assert TypeAdapter(Name).validate_python(text) == text
    assert ClientDetails(first_name=text, last_name=f"  {text}  ").last_name == text  # spaces trimmed, no more


@pytest.mark.parametrize("hidden", ["\x00", "\n", "\x1f", "\u202e"])
def test_hidden_characters_are_refused_naming_the_field_even_at_the_ends_rather_than_stripped(hidden: str) -> None:
    for name in (f"Byron{hidden}", f"{hidden}Byron"):
        with pytest.raises(ValidationError) as refused:
            ClientDetails.model_validate({"first_name": "Ada", "last_name": name})
        (error,) = refused.value.errors()
        assert error["loc"] == ("last_name",) and f"U+{ord(hidden):04X}" in error["msg"]
    with pytest.raises(ValidationError):
        TypeAdapter(LongText).validate_python("two\tcolumns")


# --- instants and dates --------------------------------------------------------------------------------------

INSTANT = TypeAdapter(ServiceInstant)


@pytest.mark.parametrize(
    ("sent", "utc"),
    [
        ("2026-11-27T15:00:00Z", datetime(2026, 11, 27, 15, tzinfo=UTC)),
        ("2026-11-27T09:00:00-06:00", datetime(2026, 11, 27, 15, tzinfo=UTC)),
        ("2026-11-28T00:30:00.250+09:30", datetime(2026, 11, 27, 15, 0, 0, 250000, tzinfo=UTC)),
        ("2000-01-01T00:00:00Z", datetime(2000, 1, 1, tzinfo=UTC)),
    ],
)
def test_an_appointment_instant_with_an_offset_is_kept_in_utc(sent: str, utc: datetime) -> None:
    kept = INSTANT.validate_python(sent)
    assert kept == utc and kept.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "sent",
    [
        "2026-11-27T15:00:00",  # naive: whose 15:00?
        "2026-11-27",
        "2026-11-27 15:00:00Z",
        "2026-11-27T15:00Z",
        "2026-11-27t15:00:00z",
        "20261127T150000Z",
        "2026-11-27T15:00:00+0100",
        "2026-11-27T15:00:00+25:00",
        "2026-02-30T15:00:00Z",
        1_795_791_600,
        "1795791600",
        None,
        "1999-12-31T23:59:59Z",
        "1900-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",  # overflowed local-date arithmetic west of UTC
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
    ],
)
def test_an_appointment_instant_is_strict_iso_8601_with_an_offset_from_2000(sent: object) -> None:
    with pytest.raises(ValidationError):
        INSTANT.validate_python(sent)


def test_an_appointment_instant_is_at_most_two_years_ahead() -> None:
    now = datetime.now(UTC)
    assert INSTANT.validate_python((now + timedelta(days=729)).isoformat())
    with pytest.raises(ValidationError, match="two years ahead"):
        INSTANT.validate_python((now + timedelta(days=732)).isoformat())


def test_a_date_of_birth_is_from_1900_and_not_in_the_future_anywhere() -> None:
    birth = TypeAdapter(BirthDate)
    today_anywhere = (datetime.now(UTC) + timedelta(hours=14)).date()
    assert birth.validate_python("1900-01-01") == date(1900, 1, 1)
    assert birth.validate_python(today_anywhere.isoformat()) == today_anywhere
    for sent in ("1899-12-31", (today_anywhere + timedelta(days=1)).isoformat(), "1980-4-13", "1980-04-13T00:00:00"):
        with pytest.raises(ValidationError):
            birth.validate_python(sent)


def test_a_service_date_is_a_local_date_an_allowed_instant_can_fall_on() -> None:
    service = TypeAdapter(ServiceDate)
    assert service.validate_python("1999-12-31") == date(1999, 12, 31)  # 2000-01-01T00:00Z west of UTC
    latest = (datetime.now(UTC) + timedelta(days=731, hours=14)).date()
    assert service.validate_python(latest.isoformat()) == latest
    for sent in ("1999-12-30", (latest + timedelta(days=1)).isoformat()):
        with pytest.raises(ValidationError):
            service.validate_python(sent)


# --- time zones ----------------------------------------------------------------------------------------------

ZONE = TypeAdapter(TimezoneName)
KNOWN_BUT_NOT_REGIONS = ["localtime", "Factory", "EST5EDT", "US/Eastern", "Etc/GMT+5", "GMT", "Zulu", "Cuba"]


@pytest.mark.parametrize(
    "name",
    [*KNOWN_BUT_NOT_REGIONS, "posixrules", "posix/America/New_York", "right/UTC", "../America/New_York",
     "America/../Europe/Paris", "/etc/localtime", "America/New_York\x00", "America/New_York/", "Mars/Olympus"],
)  # fmt: skip
def test_only_iana_region_names_and_utc_are_time_zones(name: str) -> None:
    with pytest.raises(ValidationError):
        ZONE.validate_python(name)


def test_the_refused_legacy_names_are_ones_zoneinfo_knows() -> None:
    assert set(KNOWN_BUT_NOT_REGIONS) <= available_timezones()  # so the rule, not zoneinfo, refuses them


@pytest.mark.parametrize(
    "name", ["UTC", "America/Argentina/Buenos_Aires", "America/Port-au-Prince", "Asia/Ust-Nera", "Pacific/Kiritimati"]
)
def test_region_names_are_time_zones(name: str) -> None:
    assert ZONE.validate_python(name) == name


# --- the edge --------------------------------------------------------------------------------------------------

app = build_resolver()
reached: list[str] = []


@app.post("/payments")
def _post_payment(request: PaymentRequest) -> dict[str, str]:
    reached.append("/payments")
    return {"client_id": request.client_id}


@app.post("/portal/payments")
def _post_portal_payment(request: PortalPaymentRequest) -> dict[str, str]:
    reached.append("/portal/payments")
    return {"ok": "yes"}


@app.get("/portal/me")
def _get_me() -> dict[str, str]:
    return {"client_id": str(portal_client(app).client_id)}


VALID = {"client_id": "cli_1", "amount_cents": 1500, "method": "cash"}


def _send(
    body: str | bytes | None,
    route: str = "/payments",
    role: str = "clinician",
    content_type: str | None = "application/json",
) -> tuple[int, dict[str, Any]]:
    """Answer a POST through ``resolve`` as API Gateway hands it over: bytes that are not text base64-encoded."""
    reached.clear()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": f"POST {route}",
        "rawPath": route,
        "rawQueryString": "",
        "headers": {"content-type": content_type} if content_type else {},
        "requestContext": {
            "http": {"method": "POST", "path": route, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1"},
            "routeKey": f"POST {route}",
            "stage": "$default",
            "authorizer": {"jwt": {"claims": {"custom:role": role, "custom:practice_id": "prac_1"}}},
        },
        "isBase64Encoded": isinstance(body, bytes),
    }
    if body is not None:
        event["body"] = base64.b64encode(body).decode() if isinstance(body, bytes) else body
    answer = resolve(app, event, None)
    return answer["statusCode"], json.loads(answer["body"])


def _refused(body: str | bytes, status: int, code: str, **send: Any) -> dict[str, Any]:
    answered, payload = _send(body, **send)
    assert (answered, payload["error"]["code"]) == (status, code), payload
    assert set(payload["error"]) == {"code", "message", "details"}
    assert reached == []  # refused before any route ran
    return payload


def _nested(depth: int) -> str:
    """An object holding arrays ``depth`` levels deep in all."""
    return '{"x": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


def test_a_valid_body_reaches_the_route() -> None:
    assert _send(json.dumps(VALID)) == (200, {"client_id": "cli_1"})
    assert reached == ["/payments"]


@pytest.mark.parametrize(
    "body",
    [
        json.dumps(VALID).encode("utf-16"),
        b'{"client_id": "cli_\xff", "amount_cents": 1500, "method": "cash"}',
        b'{"client_id": "cli_\xed\xa0\x80", "amount_cents": 1500, "method": "cash"}',  # an encoded surrogate
        '{"client_id": "cli_\ud800", "amount_cents": 1500, "method": "cash"}',  # a string body holding one
    ],
    ids=["utf-16", "invalid byte", "encoded surrogate", "surrogate in text"],
)
def test_a_body_that_is_not_utf8_is_400(body: str | bytes) -> None:
    details = _refused(body, 400, "invalid_json")["error"]["details"]
    assert [d["type"] for d in details] == ["body_not_utf8"]


def test_a_body_nested_ten_thousand_deep_is_400_before_parsing() -> None:
    details = _refused("[" * 10_000 + "]" * 10_000, 400, "invalid_json")["error"]["details"]
    assert details[0]["type"] == "json_too_deep"
    _refused(_nested(MAX_JSON_DEPTH + 1), 400, "invalid_json")


def test_nesting_up_to_the_limit_is_parsed_and_brackets_inside_strings_do_not_count() -> None:
    assert _send(_nested(MAX_JSON_DEPTH))[0] == 422  # parsed; then the route's model refuses it
    assert _send(json.dumps(VALID | {"reference": "[" * 50 + '\\"{'}))[0] == 200


@pytest.mark.parametrize("amount", ["1" * 5000, "1" * (MAX_NUMBER_CHARACTERS + 1), "1e" + "9" * 40, "NaN", "-Infinity"])
def test_a_huge_or_non_json_number_is_400(amount: str) -> None:
    _refused(f'{{"client_id": "cli_1", "amount_cents": {amount}, "method": "cash"}}', 400, "invalid_json")


def test_a_number_at_the_length_limit_is_parsed_then_validated() -> None:
    status, payload = _send(json.dumps(VALID | {"amount_cents": int("9" * MAX_NUMBER_CHARACTERS)}))
    assert status == 422 and [d["field"] for d in payload["error"]["details"]] == ["amount_cents"]


def test_a_body_over_the_size_limit_is_413() -> None:
    padding = "x" * (MAX_BODY_BYTES - len(json.dumps(VALID | {"reference": ""})))
    assert _send(json.dumps(VALID | {"reference": padding}))[0] == 422  # exactly the limit: read, then validated
    _refused(json.dumps(VALID | {"reference": padding + "x"}), 413, "body_too_large")
    _refused(json.dumps(VALID | {"reference": padding}).encode() + b" ", 413, "body_too_large")


@pytest.mark.parametrize(
    "body",
    ["{not json", '{"client_id": "cli_1", "client_id": "cli_2", "amount_cents": 1500, "method": "cash"}'],
    ids=["syntax", "repeated key"],
)
def test_a_body_that_is_not_json_is_400(body: str) -> None:
    _refused(body, 400, "invalid_json")


def test_a_body_sent_as_another_media_type_is_415() -> None:
    _refused("client_id=cli_1&amount_cents=1500&method=cash", 415, "unsupported_media_type",
             content_type="application/x-www-form-urlencoded")  # fmt: skip
    assert _send(json.dumps(VALID), content_type=None)[0] == 200  # no content type: read as JSON


@pytest.mark.parametrize("body", [b"\xff\xfe", "[" * 10_000, "1" * 5000, "x" * (MAX_BODY_BYTES + 1), "{}"])
def test_the_role_is_checked_before_the_body(body: str | bytes) -> None:
    _refused(body, 403, "wrong_role", route="/payments", role="client")
    _refused(body, 403, "wrong_role", route="/portal/payments", role="clinician")


def _whoami(claims: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """``GET /portal/me`` with these JWT claims, as API Gateway hands them over once the token verified."""
    http = {"method": "GET", "path": "/portal/me", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1"}
    event = {
        "version": "2.0",
        "routeKey": "GET /portal/me",
        "rawPath": "/portal/me",
        "rawQueryString": "",
        "headers": {},
        "requestContext": {
            "http": http,
            "routeKey": "GET /portal/me",
            "stage": "$default",
            "authorizer": {"jwt": {"claims": claims}},
        },
        "isBase64Encoded": False,
    }
    answer = resolve(app, event, None)
    return answer["statusCode"], json.loads(answer["body"])


PORTAL_CLAIMS = {"custom:role": "client", "custom:practice_id": "prac_1", "custom:client_id": "cli_1"}


@pytest.mark.parametrize(
    ("claim", "value", "code"),
    [
        ("custom:practice_id", "prac_1#CLIENT#cli_2", "no_practice"),
        ("custom:practice_id", "p" * 65, "no_practice"),
        ("custom:client_id", "cli_1#INVOICE#inv_9", "no_client"),
        ("custom:client_id", "cli 1", "no_client"),
        ("custom:client_id", "c" * 65, "no_client"),
    ],
)
def test_a_token_naming_a_malformed_practice_or_client_is_403(claim: str, value: str, code: str) -> None:
    status, payload = _whoami(PORTAL_CLAIMS | {claim: value})
    assert (status, payload["error"]["code"]) == (403, code)


def test_a_well_formed_client_claim_reaches_the_route() -> None:
    assert _whoami(PORTAL_CLAIMS) == (200, {"client_id": "cli_1"})
    status, payload = _whoami(PORTAL_CLAIMS | {"custom:client_id": ""})  # an empty claim is no claim
    assert (status, payload["error"]["code"]) == (403, "wrong_role")
