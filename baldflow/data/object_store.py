"""Pools in object storage: `s3://bucket/prefix` URLs, a client from the environment, ranged
reads through a bounded block cache, uploads, and errors that name the bucket and key.

Why boto3 ranged GETs rather than fsspec + s3fs: boto3 is already in the `team` extra, while
s3fs brings aiobotocore (which pins botocore) and an asyncio event loop per process; and the
pools need a cache of their own anyway: one bounded LRU of fixed-size blocks shared by every
file of the process, with counters a benchmark prints, where fsspec's caches are per open file
and unbounded in total. A row range is a byte range of x.npy (or of an .npz member), so a read
is: which blocks cover it, which of them are cached, one GET per run of missing blocks.

Credentials and the endpoint come from the environment as for any AWS client
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) for a
store that is not AWS, AWS_DEFAULT_REGION, or ~/.aws/credentials and ~/.aws/config), never from
params.yaml. The cache: BALDFLOW_S3_CACHE_MB (default 256) and BALDFLOW_S3_BLOCK_KB (default
256), or `configure_cache`. A failed request is retried with backoff (BALDFLOW_S3_RETRIES, default 4
attempts) unless retrying cannot help (missing object, access denied).
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from baldflow.data.row_pool import DiskPoolError, PoolFormatError, PoolNotFoundError

SCHEME = "s3://"
DEFAULT_CACHE_MB = 256
# Small blocks: a read of a few rows (training's labeled set) fetches a block, not megabytes,
# and a large read costs no more requests (a run of missing blocks is one GET).
DEFAULT_BLOCK_KB = 256
# A read that continues where the file's last fetch ended fetches this much at least.
READAHEAD_BYTES = 4 << 20
DEFAULT_ATTEMPTS = 4
# Files up to this size are uploaded in one PUT, so their ETag is their MD5 and a manifest
# needs no second read of them; larger ones go in parts (and are hashed by streaming).
SINGLE_PUT_BYTES = 1 << 30
_NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_DENIED = {
    "403",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
}


class ObjectStoreError(DiskPoolError):
    """A request to the object store failed (after its retries): the message names the
    endpoint, bucket and key, never the credentials."""


class ObjectNotFoundError(ObjectStoreError, PoolNotFoundError):
    """The object (or its bucket) is not in the store."""


class ObjectAccessError(ObjectStoreError):
    """The store refused the credentials or the access (403)."""


class ObjectStoreUnreachableError(ObjectStoreError):
    """The endpoint did not answer (refused, timed out, a server error every time)."""


# ---------------------------------------------------------------------------------------------
# URLs.


def is_url(location) -> bool:
    """Whether `location` names an object store location (an ObjectURL, or text s3://...)."""
    return isinstance(location, ObjectURL) or (
        isinstance(location, str) and location.startswith(SCHEME)
    )


@dataclass(frozen=True)
class ObjectURL:
    """`s3://bucket/key`: where a pool directory (a key prefix) or a file lives. Behaves like
    the few Path operations pool code uses: `/`, `name`, `suffix`, `resolve()`, `str()`."""

    bucket: str
    key: str = ""

    @classmethod
    def parse(cls, text: str | ObjectURL) -> ObjectURL:
        if isinstance(text, ObjectURL):
            return text
        if not isinstance(text, str) or not text.startswith(SCHEME):
            raise ObjectStoreError(f"{text!r} is not an s3://bucket/prefix URL")
        bucket, _, key = text[len(SCHEME) :].partition("/")
        if not bucket or any(c.isspace() for c in text) or "//" in key:
            raise ObjectStoreError(
                f"{text!r} is not an s3://bucket/prefix URL (a bucket name, then the key)"
            )
        return cls(bucket, key.strip("/"))

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}" if self.key else f"{SCHEME}{self.bucket}"

    def __truediv__(self, part: str) -> ObjectURL:
        return ObjectURL(self.bucket, f"{self.key}/{part}" if self.key else str(part))

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.name
        return name[name.rfind(".") :] if "." in name else ""

    def resolve(self) -> ObjectURL:
        return self


# ---------------------------------------------------------------------------------------------
# The client and its requests.


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


_CLIENTS: dict[tuple, object] = {}
_CLIENTS_LOCK = threading.Lock()


def client():
    """A boto3 S3 client configured from the environment (one per process and endpoint; boto3
    clients are thread-safe). Path-style addressing when an endpoint is given: stores such as
    Swift or MinIO have no per-bucket host names."""
    endpoint = endpoint_url()
    # The secret only as a hash: a changed one must not reuse a client made with the old.
    secret = hashlib.sha256(os.environ.get("AWS_SECRET_ACCESS_KEY", "").encode()).hexdigest()
    key = (os.getpid(), endpoint, os.environ.get("AWS_ACCESS_KEY_ID"), secret,
           os.environ.get("AWS_PROFILE"))  # fmt: skip
    with _CLIENTS_LOCK:
        found = _CLIENTS.get(key)
        if found is not None:
            return found
    try:
        import boto3
        from botocore.config import Config
    except ImportError as error:  # pragma: no cover - the team extra installs it
        raise ObjectStoreError(
            "pools in object storage need boto3: pip install 'baldflow[team]'"
        ) from error
    config = Config(
        s3={"addressing_style": "path"} if endpoint else {},
        retries={"max_attempts": 1, "mode": "standard"},  # our own retries, with our errors
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=16,
    )
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    made = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=region, config=config
    )
    with _CLIENTS_LOCK:
        _CLIENTS[key] = made
    return made


def _where(url: ObjectURL) -> str:
    endpoint = endpoint_url()
    return f"bucket {url.bucket!r}, key {url.key!r}" + (f" at {endpoint}" if endpoint else "")


def _classify(error: Exception) -> tuple[str, bool]:
    """(kind, whether retrying may help) of a botocore/boto3 exception."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(error, NoCredentialsError):
        return "credentials", False
    if isinstance(error, ClientError):
        info = error.response.get("Error", {})
        code = str(info.get("Code", ""))
        status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _NOT_FOUND or status == "404":
            return "missing", False
        if code in _DENIED or status == "403":
            return "denied", False
        if code == "InvalidRange" or status == "416":
            return "range", False
        return "server", not status.startswith("4")
    return "unreachable", True


def call(url: ObjectURL, what: str, request):
    """Run `request()` (one S3 call about `url`), retried with backoff when retrying may help;
    a failure is raised as an ObjectStoreError naming the bucket and key."""
    from botocore.exceptions import BotoCoreError, ClientError

    attempts = max(1, int(os.environ.get("BALDFLOW_S3_RETRIES", DEFAULT_ATTEMPTS)))
    for attempt in range(attempts):
        try:
            return request()
        except (BotoCoreError, ClientError) as error:
            kind, retry = _classify(error)
            if retry and attempt + 1 < attempts:
                time.sleep(0.2 * 2**attempt)
                continue
            raise _error(url, what, kind, error, attempt + 1) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _error(url: ObjectURL, what: str, kind: str, error: Exception, attempts: int):
    where = f"{url} ({_where(url)})"
    if kind == "missing":
        return ObjectNotFoundError(f"{what} {where}: no such object (or no such bucket)")
    if kind == "denied":
        return ObjectAccessError(
            f"{what} {where}: access denied; check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            f"(or ~/.aws/credentials) and the bucket's permissions"
        )
    if kind == "credentials":
        return ObjectAccessError(
            f"{what} {where}: no credentials found; set AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY (or ~/.aws/credentials), never params.yaml"
        )
    # botocore's own message names the endpoint and the error class, never the secret.
    detail = f"{type(error).__name__}: {error}"
    if kind == "unreachable":
        return ObjectStoreUnreachableError(
            f"{what} {where}: the object store did not answer after {attempts} attempts "
            f"({detail}); check AWS_ENDPOINT_URL and that the store is up"
        )
    return ObjectStoreError(f"{what} {where}: {detail} (after {attempts} attempts)")


# ---------------------------------------------------------------------------------------------
# The block cache.


class BlockCache:
    """A bounded LRU of fixed-size blocks of objects, shared by every remote file of the process,
    with counters: `bytes_fetched` and `requests` (GETs and HEADs sent), `hits` and `misses`
    (blocks asked for). Keys carry the object's ETag, so a rewritten object is never served
    from blocks of its old content."""

    def __init__(self, capacity_bytes: int, block_bytes: int) -> None:
        if block_bytes < 1 or capacity_bytes < 0:
            raise ValueError("block_bytes must be >= 1 and capacity_bytes >= 0")
        self.capacity_bytes = int(capacity_bytes)
        self.block_bytes = int(block_bytes)
        self._blocks: collections.OrderedDict[tuple, bytes] = collections.OrderedDict()
        self._held = 0
        self._lock = threading.Lock()
        self.reset_counters()

    def reset_counters(self) -> None:
        self.bytes_fetched = self.requests = self.hits = self.misses = 0

    def stats(self) -> dict:
        asked = self.hits + self.misses
        return {
            "bytes_fetched": self.bytes_fetched,
            "requests": self.requests,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / asked if asked else 0.0,
            "cached_bytes": self._held,
            "capacity_bytes": self.capacity_bytes,
            "block_bytes": self.block_bytes,
        }

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            block = self._blocks.get(key)
            if block is None:
                self.misses += 1
                return None
            self._blocks.move_to_end(key)
            self.hits += 1
            return block

    def put(self, key: tuple, block: bytes) -> None:
        if len(block) > self.capacity_bytes:
            return
        with self._lock:
            old = self._blocks.pop(key, None)
            if old is not None:
                self._held -= len(old)
            self._blocks[key] = block
            self._held += len(block)
            while self._held > self.capacity_bytes:
                _, dropped = self._blocks.popitem(last=False)
                self._held -= len(dropped)

    def count_request(self, fetched: int) -> None:
        with self._lock:
            self.requests += 1
            self.bytes_fetched += fetched

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._held = 0


def _env_bytes(name: str, default: float, unit: int) -> int:
    try:
        return max(1, int(float(os.environ.get(name, default)) * unit))
    except ValueError:
        return int(default * unit)


_CACHE = BlockCache(_env_bytes("BALDFLOW_S3_CACHE_MB", DEFAULT_CACHE_MB, 1 << 20),
                    _env_bytes("BALDFLOW_S3_BLOCK_KB", DEFAULT_BLOCK_KB, 1 << 10))  # fmt: skip


def block_cache() -> BlockCache:
    """The process's block cache (its counters: `block_cache().stats()`)."""
    return _CACHE


def cache_stats(reset: bool = False) -> dict:
    """This process's block cache counters (`BlockCache.stats`), and this process's PID;
    `reset` zeroes the counters afterwards. Module-level, so a benchmark can ask every Dask
    worker with `client.run(cache_stats)`."""
    stats = {**_CACHE.stats(), "pid": os.getpid()}
    if reset:
        _CACHE.reset_counters()
    return stats


def configure_cache(
    capacity_bytes: int | None = None, block_bytes: int | None = None
) -> BlockCache:
    """Replace the process's block cache (emptied, counters at zero) with another size."""
    global _CACHE
    _CACHE = BlockCache(
        _CACHE.capacity_bytes if capacity_bytes is None else capacity_bytes,
        _CACHE.block_bytes if block_bytes is None else block_bytes,
    )
    return _CACHE


# ---------------------------------------------------------------------------------------------
# Objects read by byte ranges.


def head(url: ObjectURL) -> tuple[int, str]:
    """(size, ETag without quotes) of an object."""
    answer = call(url, "reading", lambda: client().head_object(Bucket=url.bucket, Key=url.key))
    _CACHE.count_request(0)
    return int(answer["ContentLength"]), str(answer.get("ETag", "")).strip('"')


def exists(url: ObjectURL) -> bool:
    try:
        head(url)
    except ObjectNotFoundError:
        return False
    return True


def get_range(url: ObjectURL, start: int, stop: int) -> bytes:
    """Bytes [start, stop) of an object: one ranged GET (retried), counted in the cache."""
    if stop <= start:
        return b""

    def request() -> bytes:
        answer = client().get_object(
            Bucket=url.bucket, Key=url.key, Range=f"bytes={start}-{stop - 1}"
        )
        return answer["Body"].read()

    data = call(url, "reading", request)
    _CACHE.count_request(len(data))
    if len(data) != stop - start:
        raise PoolFormatError(f"{url}: asked for bytes [{start}, {stop}), got {len(data)} bytes")
    return data


class RemoteFile:
    """One object read by byte ranges through the block cache: what a file descriptor is to a
    local pool (`baldflow.data.row_pool.pread_into` calls `read_into`)."""

    def __init__(self, url: ObjectURL, size: int, etag: str) -> None:
        self.url, self.size, self.etag = url, int(size), etag
        self._endpoint = endpoint_url()
        self._next_block = -1  # the block after the last fetch: a read from there is sequential

    @classmethod
    def open(cls, url: ObjectURL) -> RemoteFile:
        size, etag = head(url)
        return cls(url, size, etag)

    def __repr__(self) -> str:
        return f"RemoteFile({str(self.url)!r}, {self.size} bytes)"

    def read_into(self, buffer: np.ndarray | memoryview | bytearray, position: int) -> None:
        """Fill `buffer` with the object's bytes from `position`: cached blocks as they are, one
        ranged GET per run of missing blocks."""
        view = memoryview(buffer).cast("B") if not isinstance(buffer, np.ndarray) else (
            memoryview(buffer.reshape(-1)).cast("B")
        )
        end = position + len(view)
        if position < 0 or end > self.size:
            raise PoolFormatError(
                f"{self.url}: bytes [{position}, {end}) asked, the object has {self.size}"
            )
        if not len(view):
            return
        cache = _CACHE
        size = cache.block_bytes
        first, last = position // size, (end - 1) // size
        blocks: dict[int, bytes] = {}
        missing = []
        for index in range(first, last + 1):
            found = cache.get(self._key(index, size))
            if found is None:
                missing.append(index)
            else:
                blocks[index] = found
        runs = list(_runs(missing))
        if runs and runs[0][0] == self._next_block:
            # Sequential reading (a sweep, whatever its piece size): fetch ahead, so a pass
            # costs a request per READAHEAD_BYTES rather than per read.
            lo, hi = runs[-1]
            ahead = max(hi, lo + max(1, READAHEAD_BYTES // size) - 1)
            runs[-1] = (lo, min(ahead, (self.size - 1) // size))
        for lo, hi in runs:
            data = get_range(self.url, lo * size, min(self.size, (hi + 1) * size))
            self._next_block = hi + 1
            for index in range(lo, hi + 1):
                block = data[(index - lo) * size : (index - lo + 1) * size]
                blocks[index] = block
                cache.put(self._key(index, size), block)
        for index in range(first, last + 1):
            base = index * size
            lo, hi = max(position, base), min(end, base + size)
            view[lo - position : hi - position] = blocks[index][lo - base : hi - base]

    def read(self, position: int = 0, count: int | None = None) -> bytes:
        count = self.size - position if count is None else count
        out = bytearray(count)
        self.read_into(out, position)
        return bytes(out)

    def _key(self, index: int, size: int) -> tuple:
        return (self._endpoint, self.url.bucket, self.url.key, self.etag, size, index)

    def reader(self) -> RemoteReader:
        return RemoteReader(self)

    def close(self) -> None:
        """Nothing is held open (the client's connections are pooled)."""


def _runs(indexes: list[int]):
    """Consecutive runs [lo, hi] of sorted integers."""
    if not indexes:
        return
    lo = prev = indexes[0]
    for index in indexes[1:]:
        if index != prev + 1:
            yield lo, prev
            lo = index
        prev = index
    yield lo, prev


class RemoteReader(io.RawIOBase):
    """A seekable binary file over a RemoteFile, for readers that want one (zipfile, numpy's
    header parsing)."""

    def __init__(self, remote: RemoteFile) -> None:
        self.remote = remote
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.remote.size}
        self.position = max(0, base[whence] + offset)
        return self.position

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self.remote.size - self.position))
        if count:
            self.remote.read_into(memoryview(buffer).cast("B")[:count], self.position)
        self.position += count
        return count


# ---------------------------------------------------------------------------------------------
# Content hashes, listing and uploads.


def content_entry(url: ObjectURL) -> dict:
    """A manifest entry of an object from what the store keeps: its size and, when its ETag is
    a content MD5 (a single-part upload: no '-' in it), that MD5; else (a multipart upload) the
    object is streamed once and its sha256 recorded."""
    size, etag = head(url)
    if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag.lower()):
        return {"bytes": size, "md5": etag.lower()}

    def stream() -> str:
        digest = hashlib.sha256()
        body = client().get_object(Bucket=url.bucket, Key=url.key)["Body"]
        for chunk in body.iter_chunks(1 << 20):
            digest.update(chunk)
        return digest.hexdigest()

    sha = call(url, "hashing", stream)
    _CACHE.count_request(size)
    return {"bytes": size, "sha256": sha}


def stamp(url: ObjectURL) -> list:
    """What changes when the object is rewritten: its size and ETag."""
    size, etag = head(url)
    return [size, etag]


# The most keys one LIST request returns (S3 answers at most 1,000, whatever is asked).
LIST_PAGE = 1000


def list_keys(prefix: ObjectURL, limit: int | None = LIST_PAGE) -> list[str]:
    """Keys under `prefix/` (names relative to it), in key order: the first `limit`, or every
    one with `limit=None` (one request per LIST_PAGE keys)."""
    folder = f"{prefix.key}/" if prefix.key else ""
    keys: list[str] = []
    token = None
    while limit is None or len(keys) < limit:
        asked = LIST_PAGE if limit is None else min(LIST_PAGE, limit - len(keys))
        request = {"Bucket": prefix.bucket, "Prefix": folder, "MaxKeys": asked}
        if token:
            request["ContinuationToken"] = token
        answer = call(prefix, "listing", lambda r=request: client().list_objects_v2(**r))
        _CACHE.count_request(0)
        keys += [item["Key"][len(folder) :] for item in answer.get("Contents", [])]
        token = answer.get("NextContinuationToken")
        if not answer.get("IsTruncated") or not token:
            break
    return keys if limit is None else keys[:limit]


def upload_file(path: str | Path, url: ObjectURL) -> None:
    """Upload a local file to `url`: one PUT up to SINGLE_PUT_BYTES (its ETag is then its MD5,
    so a manifest reads nothing back), in parts above that."""
    path = Path(path)
    if path.stat().st_size <= SINGLE_PUT_BYTES:

        def put() -> None:
            with open(path, "rb") as body:
                client().put_object(Bucket=url.bucket, Key=url.key, Body=body)

        call(url, "writing", put)
        return
    from boto3.exceptions import S3UploadFailedError
    from boto3.s3.transfer import TransferConfig

    transfer = TransferConfig(multipart_threshold=SINGLE_PUT_BYTES, multipart_chunksize=64 << 20)
    try:
        call(
            url,
            "writing",
            lambda: client().upload_file(str(path), url.bucket, url.key, Config=transfer),
        )
    except S3UploadFailedError as error:
        raise ObjectStoreError(f"writing {url} ({_where(url)}): {error}") from None


def delete(url: ObjectURL) -> None:
    call(url, "deleting", lambda: client().delete_object(Bucket=url.bucket, Key=url.key))
