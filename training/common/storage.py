"""Local-or-S3 storage: one way to name a location, read it, and write a directory atomically.

A location is a local path or an ``s3://bucket/prefix`` URI. S3 credentials and endpoint come
from the standard AWS environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, and ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` for an S3-compatible server such as MinIO or SeaweedFS), so the same
settings work for pyarrow, boto3 and Ray Train.

Directories are written atomically: the writer fills a private temporary directory, and only a
complete, validated result is published (local: one ``rename``; S3: upload, manifest last). A
failure leaves nothing half-written behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from training.common.errors import StorageError

S3_SCHEME = "s3://"


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith(S3_SCHEME)


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 filesystem configured from the standard AWS environment variables."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict = {
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
    }
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
        # S3-compatible servers are usually addressed by path, not by virtual host.
        kwargs["force_virtual_addressing"] = False
    # Fail fast instead of retrying a bad endpoint for minutes.
    kwargs["connect_timeout"] = 5
    kwargs["request_timeout"] = 30
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path)`` for a local path or an ``s3://`` URI."""
    text = str(uri)
    if is_s3(text):
        path = text[len(S3_SCHEME):].strip("/")
        if not path:
            raise StorageError(f"{text}: an S3 location needs a bucket, e.g. s3://bucket/prefix")
        return s3_filesystem(), path
    return pafs.LocalFileSystem(), str(Path(text).expanduser().absolute())


def absolute(uri: str | os.PathLike) -> str:
    """``uri`` with a local path made absolute (for processes that run in another working
    directory: Ray Tune trials, Serve replicas); S3 URIs unchanged."""
    text = str(uri)
    return text if is_s3(text) else str(Path(text).expanduser().absolute())


def join(uri: str | os.PathLike, *parts: str) -> str:
    text = str(uri)
    if is_s3(text):
        return "/".join([text.rstrip("/"), *parts])
    return str(Path(text, *parts))


def describe_error(exc: BaseException, uri: str) -> StorageError:
    """Turn a pyarrow/OS error into a one-line :class:`StorageError` that names the location."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    lowered = str(exc).lower()
    if is_s3(uri) and any(
        key in lowered
        for key in ("access_denied", "accessdenied", "signaturedoesnotmatch", "invalidaccesskeyid",
                    "forbidden", "403")
    ):
        return StorageError(
            f"{uri}: S3 refused the request (access denied) - check AWS_ACCESS_KEY_ID / "
            f"AWS_SECRET_ACCESS_KEY and the endpoint ({msg})"
        )
    if is_s3(uri) and any(key in lowered for key in ("connection", "curl", "couldn't connect")):
        return StorageError(f"{uri}: cannot reach the S3 endpoint - check AWS_ENDPOINT_URL ({msg})")
    if isinstance(exc, FileNotFoundError) or "not found" in lowered or "no such" in lowered:
        return StorageError(f"{uri}: no such file or directory")
    return StorageError(f"{uri}: {msg}")


def exists(uri: str | os.PathLike) -> bool:
    fs, path = resolve(uri)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as exc:
        raise describe_error(exc, str(uri)) from exc


def read_bytes(uri: str | os.PathLike) -> bytes:
    fs, path = resolve(uri)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise StorageError(f"{uri}: no such file")
        if info.type == pafs.FileType.Directory:
            raise StorageError(f"{uri}: is a directory, expected a file")
        with fs.open_input_stream(path, compression=None) as f:
            return f.read()
    except OSError as exc:
        raise describe_error(exc, str(uri)) from exc


def require_file(uri: str | os.PathLike, what: str = "file") -> None:
    """Raise a clear error if ``uri`` is not an existing file."""
    fs, path = resolve(uri)
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise describe_error(exc, str(uri)) from exc
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"{uri}: {what} not found")
    if info.type != pafs.FileType.File:
        raise StorageError(f"{uri}: expected a {what}, found a directory")


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a local file or directory (a directory: so the names it holds survive a power cut)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (before it is renamed into place)."""
    for p in sorted(root.rglob("*"), key=lambda x: len(x.parts), reverse=True):
        fsync_path(p)
    fsync_path(root)


def write_durably(fs: pafs.FileSystem, tmp: str, path: str, data: bytes) -> None:
    """Replace the file ``path`` with ``data`` so a crash leaves the old or the new content.

    Local: written to ``tmp``, fsynced, renamed over ``path``, and the directory fsynced. S3: one
    PUT (atomic by itself; ``tmp`` is not used)."""
    if isinstance(fs, pafs.LocalFileSystem):
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        fsync_path(os.path.dirname(os.path.abspath(path)))
        return
    with fs.open_output_stream(path) as out:
        out.write(data)


def atomic_write(uri: str | os.PathLike, data: bytes) -> None:
    """The one atomic file write: replace the file at ``uri`` (local path or ``s3://``) with ``data``
    (:func:`write_durably`; local parent directories are created)."""
    fs, path = resolve(uri)
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
        write_durably(fs, tmp, path, data)
    except OSError as exc:
        raise describe_error(exc, str(uri)) from exc


def _upload_tree(local_dir: Path, fs: pafs.FileSystem, dest: str, last: str | None) -> None:
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    ordered = [p for p in files if p.name != last] + [p for p in files if p.name == last]
    for p in ordered:
        rel = p.relative_to(local_dir).as_posix()
        with open(p, "rb") as src, fs.open_output_stream(f"{dest}/{rel}") as out:
            shutil.copyfileobj(src, out, length=8 << 20)


def _publish_s3(local: Path, fs: pafs.FileSystem, dest: str, uri: str, replace: bool,
                publish_last: str | None) -> None:
    """Upload ``local`` to ``dest``. S3 has no rename, so when replacing, the new files go to a
    staging prefix first (a network or permission failure mid-upload leaves the old directory
    untouched); the staged files are then copied server-side over the live ones, manifest last,
    and only then are the old files the new version does not have removed -- the live copy is
    never deleted before the new one is in place."""
    target = f"{dest}.staging-{uuid.uuid4().hex[:8]}" if replace else dest
    try:
        _upload_tree(local, fs, target, publish_last)
        if replace:
            names = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
            old = [f.path for f in fs.get_file_info(pafs.FileSelector(dest, recursive=True))
                   if f.type == pafs.FileType.File]
            for rel in sorted(names, key=lambda r: r == publish_last):
                fs.copy_file(f"{target}/{rel}", f"{dest}/{rel}")
            keep = {f"{dest}/{rel}" for rel in names}
            for path in old:
                if path not in keep:
                    fs.delete_file(path)
            fs.delete_dir(target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            if replace:
                fs.delete_dir(target)
            else:
                fs.delete_dir_contents(dest, missing_dir_ok=True)
        raise describe_error(exc, uri) from exc


@contextlib.contextmanager
def atomic_output_dir(uri: str | os.PathLike, *, overwrite: bool = False,
                      publish_last: str | None = None) -> Iterator[Path]:
    """Yield a local temporary directory; publish it at ``uri`` only if the block succeeds.

    Args:
        uri: destination directory (local path or ``s3://`` URI).
        overwrite: replace an existing destination; otherwise an existing one is an error.
        publish_last: a file name written last on S3 (a manifest), so readers that require it
            never see a partial upload.

    Local destinations: the temp dir is a sibling of ``uri`` and is renamed into place, so the
    switch is atomic on one filesystem. If ``overwrite`` replaces a directory, the old one is
    moved aside first and removed only after the new one is in place. S3 destinations: see
    :func:`_publish_s3`.
    """
    text = str(uri)
    fs, dest = resolve(text)
    try:
        present = fs.get_file_info(dest).type != pafs.FileType.NotFound
    except OSError as exc:
        raise describe_error(exc, text) from exc
    if present and not overwrite:
        raise StorageError(f"{text}: already exists (pass --overwrite to replace it)")

    if is_s3(text):
        tmp = Path(tempfile.mkdtemp(prefix="raycart-out-"))
        try:
            yield tmp
            _publish_s3(tmp, fs, dest, text, replace=present, publish_last=publish_last)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return

    final = Path(dest)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise describe_error(exc, text) from exc
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)  # the content is on disk before its name is
        if present:
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            os.rename(tmp, final)
            fsync_path(final.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
            fsync_path(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
