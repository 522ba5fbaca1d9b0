"""Logger, Tracer and Metrics shared by all handlers. Log lines carry ids and codes, never PHI."""

from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger()
tracer = Tracer()
metrics = Metrics()
