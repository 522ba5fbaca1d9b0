"""Local JWTs: HS256 tokens shaped like the Cognito ID tokens API Gateway would verify.

``python -m local.tokens --practice P [--role clinician|client] [--client C] [--ttl 3600]`` prints one;
`make_token` is the same for tests. The local server verifies them with `local_jwt_secret`.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
import warnings
from collections.abc import Sequence

import jwt

DEFAULT_SECRET = "local-dev-secret"
# The documented local secret is shorter than RFC 7518 recommends; it guards nothing real.
warnings.filterwarnings("ignore", category=jwt.InsecureKeyLengthWarning)
ROLES = ("clinician", "client")


# Who issues local tokens and for whom. API Gateway's JWT authorizer checks both against the template's user pool
# (``JwtConfiguration``: issuer and audience); the local server checks them against these.
LOCAL_ISSUER = "https://cognito-idp.local/billing-local"
LOCAL_AUDIENCE = "billing-local-app"


def local_jwt_secret() -> str:
    """The HS256 secret: ``BILLING_LOCAL_JWT_SECRET``, default ``local-dev-secret``."""
    return os.environ.get("BILLING_LOCAL_JWT_SECRET") or DEFAULT_SECRET


def make_token(
    practice_id: str,
    role: str = "clinician",
    client_id: str | None = None,
    ttl: int = 3600,
    secret: str | None = None,
) -> str:
    """An HS256 JWT for ``practice_id`` acting as ``role`` that expires in ``ttl`` seconds.

    Claims: ``iss`` and ``aud`` (the local ones), ``sub`` (stable per practice, role and client), ``iat``,
    ``exp``, ``token_use: id``, ``custom:practice_id``, ``custom:role`` and, when given, ``custom:client_id``.
    """
    now = int(time.time())
    identity = f"{practice_id}/{role}/{client_id or ''}"
    claims: dict[str, object] = {
        "iss": LOCAL_ISSUER,
        "aud": LOCAL_AUDIENCE,
        "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, f"billing-local:{identity}")),
        "iat": now,
        "exp": now + ttl,
        "token_use": "id",
        "custom:practice_id": practice_id,
        "custom:role": role,
    }
    if client_id:
        claims["custom:client_id"] = client_id
    return jwt.encode(claims, secret or local_jwt_secret(), algorithm="HS256")


def main(argv: Sequence[str] | None = None) -> int:
    """Print a token for the practice and role given on the command line."""
    parser = argparse.ArgumentParser(prog="python -m local.tokens", description=__doc__)
    parser.add_argument("--practice", required=True, help="custom:practice_id")
    parser.add_argument("--role", choices=ROLES, default="clinician", help="custom:role")
    parser.add_argument("--client", help="custom:client_id (for --role client)")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds until exp")
    args = parser.parse_args(argv)
    if args.role == "client" and not args.client:
        parser.error("--role client needs --client")
    print(make_token(args.practice, role=args.role, client_id=args.client, ttl=args.ttl))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
