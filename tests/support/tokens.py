"""Hostile variants of a local JWT, for tests that prove the authorizer refuses them.

Each starts from a token `local.tokens.make_token` made, so the claims are exactly what a real caller's would be
and only the one property under test differs: the signature no longer matches, the algorithm is ``none``,
or a claim is missing.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt

from local.tokens import local_jwt_secret


def claims_of(token: str) -> dict[str, Any]:
    """The claims a token carries, read without checking anything (the attacker can read them too)."""
    return dict(jwt.decode(token, options={"verify_signature": False}))


def _segment(value: dict[str, Any]) -> str:
    """One base64url JWT segment, unpadded as RFC 7515 wants."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def with_claims_changed(token: str, changes: dict[str, Any]) -> str:
    """``token`` with some claims rewritten but its header and signature kept: what an attacker who edits the
    payload of a valid token gets."""
    header, _, signature = token.split(".")
    claims = claims_of(token) | changes
    return f"{header}.{_segment(claims)}.{signature}"


def unsigned(token: str) -> str:
    """``token``'s claims with ``alg: none`` and no signature (RFC 7519's "unsecured JWT")."""
    return f"{_segment({'alg': 'none', 'typ': 'JWT'})}.{_segment(claims_of(token))}."


def without_claim(token: str, name: str) -> str:
    """``token`` re-signed with the right secret but without claim ``name``: valid, yet missing what it should say."""
    claims = {key: value for key, value in claims_of(token).items() if key != name}
    return jwt.encode(claims, local_jwt_secret(), algorithm="HS256")
