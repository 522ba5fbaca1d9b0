"""The documents bucket: opaque keys (ids and versions only), SSE-KMS, presigned downloads of at most 5 minutes."""

from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

URL_LIFETIME = timedelta(minutes=5)
PDF = "application/pdf"
CSV = "text/csv; charset=utf-8"


def document_key(practice_id: str, kind: str, object_id: str, version: str, suffix: str = "pdf") -> str:
    """``documents/<practice>/<kind>/<id>/<version>.pdf``: never a name, a diagnosis or a date of service."""
    return f"documents/{practice_id}/{kind}/{object_id}/{version}.{suffix}"


class DocumentArchive:
    def __init__(self, s3: Any, bucket: str, kms_key_id: str | None):
        self._s3 = s3
        self._bucket = bucket
        self._kms_key_id = kms_key_id

    def exists(self, key: str) -> bool:
        try:
            self._s3.head_object(Bucket=self._bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def put(self, key: str, body: bytes, content_type: str) -> None:
        encryption: dict[str, Any] = {"ServerSideEncryption": "aws:kms", "BucketKeyEnabled": True}
        if self._kms_key_id:
            encryption["SSEKMSKeyId"] = self._kms_key_id
        self._s3.put_object(Bucket=self._bucket, Key=key, Body=body, ContentType=content_type, **encryption)

    def link(self, key: str, now: datetime, filename: str) -> tuple[str, datetime]:
        """A presigned GET valid for URL_LIFETIME; ``filename`` (ids only) is what the browser saves it as."""
        url = self._s3.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self._bucket,
                "Key": key,
                "ResponseContentDisposition": f'inline; filename="{filename}"',
            },
            ExpiresIn=int(URL_LIFETIME.total_seconds()),
        )
        return url, now + URL_LIFETIME
