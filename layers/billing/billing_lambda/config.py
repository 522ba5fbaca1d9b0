"""Per-function configuration: one validated pydantic model read from the environment."""

import os
from functools import cache
from typing import TypeVar

from pydantic import ConfigDict, Field

from billing.schema import Model


class FunctionSettings(Model):
    """Every function needs the table; subclasses add what else they need."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    table_name: str = Field(alias="TABLE_NAME", min_length=1)


class CalendarSettings(FunctionSettings):
    schedule_group_name: str = Field(alias="SCHEDULE_GROUP_NAME", min_length=1)
    scheduler_role_arn: str = Field(alias="SCHEDULER_ROLE_ARN", min_length=1)
    schedules_dlq_arn: str = Field(alias="SCHEDULES_DLQ_ARN", min_length=1)
    daily_invoices_function_arn: str = Field(alias="DAILY_INVOICES_FUNCTION_ARN", min_length=1)
    autopay_function_arn: str = Field(alias="AUTOPAY_FUNCTION_ARN", min_length=1)
    finance_export_function_arn: str = Field(alias="FINANCE_EXPORT_FUNCTION_ARN", min_length=1)


class DailyInvoicesSettings(FunctionSettings):
    daily_invoices_queue_url: str = Field(alias="DAILY_INVOICES_QUEUE_URL", min_length=1)


class AutoPaySettings(FunctionSettings):
    autopay_queue_url: str = Field(alias="AUTOPAY_QUEUE_URL", min_length=1)


class WebhookSettings(FunctionSettings):
    idempotency_table_name: str = Field(alias="IDEMPOTENCY_TABLE_NAME", min_length=1)


Settings = TypeVar("Settings", bound=FunctionSettings)


@cache
def load_settings(kind: type[Settings]) -> Settings:
    """The function's settings, validated once per container; a missing variable fails loudly at start."""
    return kind.model_validate(dict(os.environ))
