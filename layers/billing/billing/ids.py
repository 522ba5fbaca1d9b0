"""Opaque, prefixed object ids chosen by the server (``cli_…``, ``apt_…``, ``inv_…``)."""

import uuid


def new_id(prefix: str) -> str:
    """A fresh random id; carries no information about the object or the person."""
    return f"{prefix}_{uuid.uuid4().hex}"
