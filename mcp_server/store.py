"""Where full images and job records live between the call and the download.

A local directory serves one replica; an S3-compatible bucket lets every replica serve every
link. Both expire entries after the TTL: the local store sweeps its directory, the S3 store
checks the expiry it stamped on each object when reading it (add a bucket lifecycle rule to
reclaim the space too).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp_server.errors import InvalidIdError, StoreUnavailableError
from mcp_server.settings import Settings

# token_urlsafe(24) gives 32 characters; anything else is refused before touching storage,
# which also makes path traversal impossible.
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{32}$")


def new_id() -> str:
    return secrets.token_urlsafe(24)


def check_id(value: str, param: str) -> str:
    if not ID_PATTERN.match(value):
        raise InvalidIdError(value, param=param)
    return value


@dataclass(frozen=True)
class StoredImage:
    data: bytes
    mime_type: str


class Store(ABC):
    """Images (immutable, with a TTL) and small JSON documents (job records)."""

    # Says which store failed, e.g. "local directory /tmp/images".
    description = "image store"

    def __init__(self, ttl_seconds: int) -> None:
        self.ttl_seconds = ttl_seconds

    async def _io(self, what: str, function: Any, *args: Any) -> Any:
        # Without this a full disk or an unreachable bucket surfaced as a bare HTTP 500.
        try:
            return await asyncio.to_thread(function, *args)
        except Exception as exc:
            raise StoreUnavailableError(
                f"The image store ({self.description}) is unavailable while {what}: "
                f"{type(exc).__name__}: {exc}. Images stored before are kept; retry later, "
                "and check the store (disk space and permissions, or the S3 endpoint and "
                "credentials)."
            ) from exc

    async def put_image(self, data: bytes, mime_type: str) -> str:
        image_id = new_id()
        expires_at = time.time() + self.ttl_seconds
        await self._io(
            "storing an image", self._put, f"images/{image_id}", data, mime_type, expires_at
        )
        return image_id

    async def get_image(self, image_id: str) -> StoredImage | None:
        key = f"images/{check_id(image_id, 'image_id')}"
        found = await self._io("reading an image", self._get, key)
        return None if found is None else StoredImage(*found)

    async def put_json(self, key: str, document: dict[str, Any]) -> None:
        data = json.dumps(document).encode()
        expires_at = time.time() + self.ttl_seconds
        await self._io("saving a job", self._put, key, data, "application/json", expires_at)

    async def get_json(self, key: str) -> dict[str, Any] | None:
        found = await self._io("reading a job", self._get, key)
        return None if found is None else json.loads(found[0])

    async def exists(self, key: str) -> bool:
        return await self._io("reading a job", self._get, key) is not None

    async def check(self) -> None:
        """Raise with a clear message when the store cannot be written."""
        await asyncio.to_thread(self._check)

    @abstractmethod
    def _put(self, key: str, data: bytes, mime_type: str, expires_at: float) -> None: ...

    @abstractmethod
    def _get(self, key: str) -> tuple[bytes, str] | None: ...

    @abstractmethod
    def _check(self) -> None: ...


class LocalStore(Store):
    """One file per entry plus a JSON sidecar with its type and expiry."""

    SWEEP_INTERVAL_SECONDS = 60

    def __init__(self, root: Path, ttl_seconds: int) -> None:
        super().__init__(ttl_seconds)
        self.root = root
        self.description = f"local directory {root}"
        self._last_sweep = 0.0

    def _paths(self, key: str) -> tuple[Path, Path]:
        path = self.root / key
        return path, path.with_name(path.name + ".meta")

    def _put(self, key: str, data: bytes, mime_type: str, expires_at: float) -> None:
        path, meta = self._paths(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename so a reader on another thread never sees half a file.
        for target, content in (
            (path, data),
            (meta, json.dumps({"mime_type": mime_type, "expires_at": expires_at}).encode()),
        ):
            partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
            partial.write_bytes(content)
            partial.replace(target)
        self._sweep()

    def _get(self, key: str) -> tuple[bytes, str] | None:
        path, meta = self._paths(key)
        try:
            info = json.loads(meta.read_bytes())
            data = path.read_bytes()
        except (FileNotFoundError, ValueError):
            return None
        if info["expires_at"] < time.time():
            self._delete(path, meta)
            return None
        return data, info["mime_type"]

    @staticmethod
    def _delete(*paths: Path) -> None:
        for path in paths:
            path.unlink(missing_ok=True)

    def _sweep(self) -> None:
        now = time.time()
        if now - self._last_sweep < self.SWEEP_INTERVAL_SECONDS:
            return
        self._last_sweep = now
        for meta in self.root.glob("*/*.meta"):
            try:
                expired = json.loads(meta.read_bytes())["expires_at"] < now
            except (OSError, ValueError, KeyError):
                continue
            if expired:
                self._delete(meta.with_name(meta.name.removesuffix(".meta")), meta)

    def _check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{secrets.token_hex(4)}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StoreUnavailableError(
                f"IMAGE_STORE_DIR {str(self.root)!r} is not writable ({exc}); point it at a "
                "writable directory (an emptyDir volume in Kubernetes)"
            ) from exc


class S3Store(Store):
    """Objects under S3_PREFIX; the expiry rides along as object metadata."""

    def __init__(
        self, bucket: str, prefix: str, endpoint_url: str | None, ttl_seconds: int
    ) -> None:
        super().__init__(ttl_seconds)
        # boto3 is imported here so a local-store server never pays for it.
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        self._endpoint = endpoint_url or "the AWS default endpoint"
        self.description = f"S3 bucket {bucket!r} at {self._endpoint}"
        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2}),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def _put(self, key: str, data: bytes, mime_type: str, expires_at: float) -> None:
        self._client.put_object(
            Bucket=self.bucket,
            Key=self._key(key),
            Body=data,
            ContentType=mime_type,
            Metadata={"expires-at": str(expires_at), "sha256": hashlib.sha256(data).hexdigest()},
        )

    def _get(self, key: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        try:
            found = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        metadata = found.get("Metadata") or {}
        if "expires-at" not in metadata:
            # Every object written here carries it: a 200 without it came from something
            # else (a misrouted endpoint, a broken proxy), and its body is not our image.
            raise ValueError(f"the answer for {key} is not an object this server stored")
        if float(metadata["expires-at"]) < time.time():
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
            return None
        data = found["Body"].read()
        if "sha256" in metadata and hashlib.sha256(data).hexdigest() != metadata["sha256"]:
            raise ValueError(f"the bytes read for {key} do not match the checksum stored")
        return data, found["ContentType"]

    def _check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise StoreUnavailableError(
                f"S3 bucket {self.bucket!r} at {self._endpoint} is not usable ({exc}); check "
                "S3_BUCKET, S3_ENDPOINT_URL and the AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                "credentials"
            ) from exc


def make_store(settings: Settings) -> Store:
    if settings.image_store == "s3":
        assert settings.s3_bucket is not None  # enforced by Settings
        return S3Store(
            settings.s3_bucket,
            settings.s3_prefix,
            settings.s3_endpoint_url,
            settings.image_ttl_seconds,
        )
    return LocalStore(Path(settings.image_store_dir), settings.image_ttl_seconds)
