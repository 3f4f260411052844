"""S3 backup store (``s3://bucket/prefix``): multipart upload completed only at the end.

Parts are uploaded with their Content-MD5 (S3 rejects a part damaged on the way), at most
``max_concurrency`` at a time while the next part is being read, so memory stays around
``(max_concurrency + 1) * part size`` whatever the object size. Any error (including one
raised by the producer) aborts the upload: nothing becomes visible. After completion a HEAD
checks the size and the multipart ETag computed from our own part digests.

Never replacing a key (see ``connectors.stores.base``): the checksum file and then the object
are written with ``If-None-Match: *`` (PutObject and CompleteMultipartUpload), which S3 (and
moto) refuse with 412 when the key exists; a HEAD before the upload refuses early. A store that
ignores the header (some S3-compatible servers) is protected only by that HEAD, a best effort
against a writer racing for the same key, and by keys being unique by construction.

A CompleteMultipartUpload (or PutObject) that S3 carried out but whose answer was lost (a
timeout, a 5xx after the fact, or a 412 to botocore's retry of our own conditional write) is
recognised by a HEAD: an object at the key with the ETag computed from our own parts (size only
for KMS-encrypted objects, whose ETag is not an MD5) is ours, and the write goes on.

Part size starts at ``part_size`` and grows by that much every 1000 parts (S3 allows 10 000
parts), so the default 8 MiB reaches ~430 GiB with a largest part of 80 MiB.

Credentials come from the standard boto3 chain (env vars, profile, instance role). Requests
are retried by botocore (standard mode: 5xx, throttling, connection errors); what still fails
is raised as ``TransientError`` or ``PermanentError`` with a fix.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
)

from connectors.stores.base import (
    SHA256_SUFFIX,
    KeyExists,
    Progress,
    Store,
    StoredObject,
    check_key,
    parse_sidecar,
    sidecar_text,
)
from connectors.streams import CHUNK_SIZE, Hashed
from opsflow.errors import InputError, OpsflowError, PermanentError, TransientError
from opsflow.redaction import redact, register_secret

log = logging.getLogger(__name__)

DEFAULT_PART_SIZE = 8 << 20
MIN_PART_SIZE = 5 << 20
MAX_PARTS = 10_000
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60
MAX_ATTEMPTS = 5  # tries in all, the first included (botocore's total_max_attempts)
_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "OperationAborted",
}
_CREDENTIAL_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
}
_KMS = ("aws:kms", "aws:kms:dsse")


class S3Store(Store):
    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = 2,
        read_timeout: float | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise InputError("backup_store.url", f"{url!r} names no bucket", "use s3://bucket/dir")
        if part_size < MIN_PART_SIZE:
            raise InputError("part_size", f"{part_size} is below S3's 5 MiB", "use 5 MiB or more")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.part_size = part_size
        self.max_concurrency = max(1, max_concurrency)
        config = Config(
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=read_timeout if read_timeout is not None else READ_TIMEOUT_S,
            retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
            max_pool_connections=self.max_concurrency + 4,
            s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        session = boto3.session.Session()
        register_chain_credentials(session)
        self._s3: Any = session.client("s3", endpoint_url=endpoint_url, config=config)

    # --- writing --------------------------------------------------------------------------

    def put_stream(
        self, key: str, chunks: Iterable[bytes], *, progress: Progress | None = None
    ) -> StoredObject:
        full = self._full(key)
        if self._head_raw(key) is not None:  # early, and for stores that ignore If-None-Match
            raise self._exists(key)
        hashed = Hashed(chunks)
        parts = self._parts(hashed)
        first = next(parts)  # producer errors propagate unchanged
        if len(first) < self.part_size:  # the whole stream fits in one request: atomic PUT
            expected_etag = hashlib.md5(first, usedforsecurity=False).hexdigest()
            self._put_sidecar(key, hashed.sha256)
            try:
                self._conditional(
                    key,
                    "upload",
                    expected_etag,
                    len(first),
                    lambda: self._s3.put_object(
                        Bucket=self.bucket,
                        Key=full,
                        Body=first,
                        ContentMD5=_b64md5(first),
                        IfNoneMatch="*",
                    ),
                )
            except BaseException:
                self._drop_sidecar(key)
                raise
            if progress is not None:
                progress(len(first))
        else:
            expected_etag = self._multipart(key, full, first, parts, hashed, progress)
        return self._verify(key, hashed, expected_etag)

    def _multipart(
        self,
        key: str,
        full: str,
        first: bytes,
        rest: Iterator[bytes],
        hashed: Hashed,
        progress: Progress | None,
    ) -> str:
        with self._errors("start the upload of", key):
            upload_id = self._s3.create_multipart_upload(Bucket=self.bucket, Key=full)["UploadId"]
        done: builtins.list[tuple[int, str, bytes]] = []
        sidecar = False
        pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="s3-part")
        try:
            try:
                pending: deque[Future[tuple[int, str, bytes, int]]] = deque()
                for number, body in enumerate(_chain(first, rest), 1):  # producer errors pass
                    if number > MAX_PARTS:
                        raise PermanentError(
                            f"{self.url}/{key}: more than {MAX_PARTS} parts (fix: raise part_size)"
                        )
                    pending.append(pool.submit(self._upload_part, key, upload_id, number, body))
                    while len(pending) >= self.max_concurrency:
                        done.append(_harvest(pending.popleft(), progress))
                while pending:
                    done.append(_harvest(pending.popleft(), progress))
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            digests = b"".join(md5 for _, _, md5 in done)
            expected_etag = f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(done)}"
            self._put_sidecar(key, hashed.sha256)
            sidecar = True
            self._conditional(
                key,
                "complete the upload of",
                expected_etag,
                hashed.size,
                lambda: self._s3.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    MultipartUpload={
                        "Parts": [{"PartNumber": n, "ETag": etag} for n, etag, _ in done]
                    },
                    IfNoneMatch="*",
                ),
            )
        except BaseException:
            self._abort(key, upload_id)
            if sidecar:
                self._drop_sidecar(key)
            raise
        return expected_etag

    def _conditional(
        self, key: str, action: str, expected_etag: str, size: int, write: Any
    ) -> None:
        """Run a conditional write (``If-None-Match: *``). When it fails, an object at ``key``
        that is ours (our ETag and size: S3 carried the write out, its answer was lost) counts
        as written; another object there is ``KeyExists``; else the error is raised."""
        try:
            with self._errors(action, key):
                write()
        except OpsflowError as exc:
            if self._is_ours(key, expected_etag, size):
                log.warning(
                    "%s/%s: S3 stored the object although the request failed (%s); it is ours "
                    "(same ETag and size), going on",
                    self.url,
                    key,
                    exc,
                )
                return
            if isinstance(exc, _PreconditionFailed):
                raise self._exists(key) from None
            raise

    def _is_ours(self, key: str, expected_etag: str, size: int) -> bool:
        try:
            answer = self._head_raw(key)
        except OpsflowError:
            return False
        if answer is None or answer["ContentLength"] != size:
            return False
        if answer.get("ServerSideEncryption") in _KMS or answer.get("SSECustomerAlgorithm"):
            return True  # no MD5 ETag to compare; the key is unique, the size is ours
        return str(answer.get("ETag", "")).strip('"') == expected_etag

    def _head_raw(self, key: str) -> Any:
        """HEAD of the object itself (no checksum read), or None when it does not exist."""
        try:
            with self._errors("look up", key):
                return self._s3.head_object(Bucket=self.bucket, Key=self._full(key))
        except _NotFound:
            return None

    def _exists(self, key: str) -> KeyExists:
        return KeyExists(
            f"{self.url}/{key} already exists: a stored backup is never replaced (fix: take "
            "the backup again, it gets a new key; keys from choose_key are unique)"
        )

    def _upload_part(
        self, key: str, upload_id: str, number: int, body: bytes
    ) -> tuple[int, str, bytes, int]:
        md5 = hashlib.md5(body, usedforsecurity=False).digest()
        with self._errors(f"upload part {number} of", key):
            answer = self._s3.upload_part(
                Bucket=self.bucket,
                Key=self._full(key),
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ContentMD5=base64.b64encode(md5).decode(),
            )
        return number, answer["ETag"], md5, len(body)

    def _parts(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Cut the stream into parts (see module doc for the sizes); always at least one."""
        buffer = bytearray()
        number = 1
        for chunk in chunks:
            buffer += chunk
            while len(buffer) >= (target := self.part_size * (1 + (number - 1) // 1000)):
                with memoryview(buffer) as view:
                    part = bytes(view[:target])
                del buffer[:target]
                number += 1
                yield part
        if buffer or number == 1:
            yield bytes(buffer)

    def _verify(self, key: str, hashed: Hashed, expected_etag: str) -> StoredObject:
        """HEAD the new object: its size and ETag must be those of what we sent."""
        with self._errors("verify", key):
            answer = self._s3.head_object(Bucket=self.bucket, Key=self._full(key))
        etag = str(answer.get("ETag", "")).strip('"')
        encrypted_by_kms = answer.get("ServerSideEncryption") in _KMS or answer.get(
            "SSECustomerAlgorithm"
        )
        problem = None
        if answer["ContentLength"] != hashed.size:
            problem = f"size {answer['ContentLength']} instead of {hashed.size}"
        elif not encrypted_by_kms and etag != expected_etag:
            problem = f"ETag {etag} instead of {expected_etag}"
        if problem:
            self.delete(key)
            raise TransientError(
                f"{self.url}/{key} failed verification after upload ({problem}); it was deleted, "
                "retry the backup"
            )
        return self._object(key, answer["ContentLength"], hashed.sha256, answer["LastModified"])

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            with self._errors("abort the upload of", key):
                self._s3.abort_multipart_upload(
                    Bucket=self.bucket, Key=self._full(key), UploadId=upload_id
                )
        except OpsflowError as exc:  # keep the original error; the upload stays invisible
            log.warning(
                "could not abort multipart upload %s of %s/%s (%s); it is invisible but "
                "holds storage until cleanup_incomplete or a lifecycle rule removes it",
                upload_id,
                self.url,
                key,
                exc,
            )

    def _put_sidecar(self, key: str, sha256: str) -> None:
        """Create ``<key>.sha256`` (never replacing one; a retry of our own write is fine)."""
        try:
            with self._errors("store the checksum of", key):
                self._s3.put_object(
                    Bucket=self.bucket,
                    Key=self._full(key) + SHA256_SUFFIX,
                    Body=sidecar_text(sha256, key),
                    IfNoneMatch="*",
                )
        except _PreconditionFailed:
            if self._stored_sha256(key) != sha256:
                raise self._exists(key) from None

    def _drop_sidecar(self, key: str) -> None:
        """After a failed write: remove the checksum file this write created."""
        try:
            with self._errors("delete the checksum of", key):
                self._s3.delete_object(Bucket=self.bucket, Key=self._full(key) + SHA256_SUFFIX)
        except OpsflowError as exc:  # the checksum file alone is invisible to list()
            log.warning("could not remove checksum file of %s/%s: %s", self.url, key, exc)

    def delete(self, key: str) -> None:
        full = self._full(key)
        with self._errors("delete", key):
            self._s3.delete_object(Bucket=self.bucket, Key=full)
            self._s3.delete_object(Bucket=self.bucket, Key=full + SHA256_SUFFIX)

    def cleanup_incomplete(
        self, older_than: timedelta = timedelta(days=1), prefix: str = ""
    ) -> builtins.list[str]:
        """Abort multipart uploads started before ``older_than`` ago.

        A bucket lifecycle rule ``AbortIncompleteMultipartUpload`` does the same on the server
        side. (moto reports every upload as started in 2010, so there all count as old.)
        """
        limit = datetime.now(UTC) - older_than
        aborted: builtins.list[str] = []
        with self._errors("list unfinished uploads under", prefix or "/"):
            pages = self._s3.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self._base() + prefix
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] < limit:
                        self._s3.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        aborted.append(upload["Key"])
        return aborted

    # --- reading --------------------------------------------------------------------------

    def get_stream(
        self, key: str, *, expected_sha256: str | None = None, chunk_size: int = CHUNK_SIZE
    ) -> Iterator[bytes]:
        stored = self._stored_sha256(key)
        where = f"{self.url}/{key}"
        if expected_sha256 and stored and expected_sha256.lower() != stored:
            raise PermanentError(
                f"{where} is not the expected backup: its stored sha256 {stored} differs from "
                f"the expected {expected_sha256.lower()}; nothing was read"
            )
        with self._errors("read", key):
            answer = self._s3.get_object(Bucket=self.bucket, Key=self._full(key))
        body = answer["Body"]
        return self._read(
            key, body, Hashed(body.iter_chunks(chunk_size), expected_sha256 or stored, where)
        )

    def _read(self, key: str, body: Any, chunks: Iterator[bytes]) -> Iterator[bytes]:
        try:
            with self._errors("read", key):
                yield from chunks
        finally:
            body.close()

    def head(self, key: str) -> StoredObject | None:
        try:
            with self._errors("look up", key):
                answer = self._s3.head_object(Bucket=self.bucket, Key=self._full(key))
        except _NotFound:
            return None
        sha = self._stored_sha256(key)
        return self._object(key, answer["ContentLength"], sha, answer["LastModified"])

    def list(self, prefix: str = "") -> builtins.list[StoredObject]:
        base = self._base()
        found: builtins.list[StoredObject] = []
        with self._errors("list", prefix or "/"):
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base + prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"][len(base) :]
                    if key.endswith(SHA256_SUFFIX) or not key:
                        continue
                    found.append(self._object(key, item["Size"], None, item["LastModified"]))
        return sorted(found, key=lambda o: o.key)

    # --- helpers --------------------------------------------------------------------------

    def _stored_sha256(self, key: str) -> str | None:
        try:
            with self._errors("read the checksum of", key):
                answer = self._s3.get_object(
                    Bucket=self.bucket, Key=self._full(key) + SHA256_SUFFIX
                )
                return parse_sidecar(answer["Body"].read(4096))
        except _NotFound:
            return None

    def _base(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def _full(self, key: str) -> str:
        return self._base() + check_key(key)

    def _object(self, key: str, size: int, sha256: str | None, when: datetime) -> StoredObject:
        return StoredObject(
            key=key, size=size, sha256=sha256, last_modified=when, url=f"{self.url}/{key}"
        )

    @contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """Classify botocore failures as transient/permanent with an operator-facing message."""
        where = f"{self.url}/{key}"
        try:
            yield
        except ClientError as exc:
            raise _client_error(exc, action, where, self.bucket) from exc
        except NoCredentialsError as exc:
            raise PermanentError(
                f"cannot {action} {where}: no AWS credentials found (fix: set "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role for "
                "the process running the flow)"
            ) from exc
        except (ConnectionError, HTTPClientError, IncompleteReadError) as exc:
            raise TransientError(
                redact(f"cannot {action} {where}: {exc} (after {MAX_ATTEMPTS} attempts)")
            ) from exc
        except BotoCoreError as exc:
            raise PermanentError(redact(f"cannot {action} {where}: {exc}")) from exc


class _NotFound(PermanentError):
    """404 from S3: an object (or its checksum file) that does not exist."""


class _PreconditionFailed(PermanentError):
    """412 from S3: a conditional write (``If-None-Match: *``) found the key taken."""


def _client_error(exc: ClientError, action: str, where: str, bucket: str) -> OpsflowError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    detail = redact(f"{code or status}: {error.get('Message', '')}".strip(": "))
    text = f"cannot {action} {where}: {detail}"
    if code == "NoSuchBucket":
        return PermanentError(
            f"{text} (fix: create bucket {bucket} or correct backup_store.url in the inventory)"
        )
    if code in ("NoSuchKey", "404", "NotFound") or status == 404:
        return _NotFound(f"{text} (it does not exist)")
    if code == "PreconditionFailed" or status == 412:
        return _PreconditionFailed(f"{text} (the key is taken)")
    if code in _CREDENTIAL_CODES or status in (401, 403):
        return PermanentError(
            f"{text} (fix: check the AWS credentials of the process running the flow and that "
            f"they may read and write bucket {bucket})"
        )
    if code in _TRANSIENT_CODES or status >= 500 or status in (408, 409, 429):
        return TransientError(f"{text} (after {MAX_ATTEMPTS} attempts)")
    return PermanentError(text)


def _harvest(
    future: Future[tuple[int, str, bytes, int]], progress: Progress | None
) -> tuple[int, str, bytes]:
    number, etag, md5, size = future.result()
    if progress is not None:
        progress(size)
    return number, etag, md5


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _b64md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def register_chain_credentials(session: Any) -> None:
    """Register the secret half of the credentials boto3's chain found (env, profile, role) for
    redaction: opsflow never resolved them, but a library's error may echo them."""
    try:
        credentials = session.get_credentials()
    except BotoCoreError:
        return  # no usable chain: the first request says so (NoCredentialsError)
    if credentials is None:
        return
    frozen = credentials.get_frozen_credentials()
    for value in (frozen.secret_key, frozen.token):
        if value:
            register_secret(value)
