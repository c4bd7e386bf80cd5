"""Images of items added at runtime: read only from the configured image root, with caps.

A new item names its image as a key under ``image_root`` (a local folder or an ``s3://`` prefix),
never as a path or URI of its own: absolute paths, ``..``, schemes and links out of the root are
refused, as are devices and other non-regular files. A read stops at ``max_bytes`` and an image
with more than ``max_pixels`` pixels is refused before it is decoded (decompression bombs).
Plain Python (no Ray): the Retriever and Ranker replicas read through it.
"""

from __future__ import annotations

import io
import os
import re
import stat
from dataclasses import dataclass

import pyarrow.fs as pafs
from PIL import Image

from training.common import storage

KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,499}")
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")  # decoders PIL may use (not e.g. EPS, which runs Ghostscript)


class ImageRefused(ValueError):
    """An image reference or file that is not accepted; the message says why (safe to return)."""


@dataclass(frozen=True)
class ImageSource:
    root: str | None
    max_bytes: int = 5 * 1024 * 1024
    max_pixels: int = 40_000_000

    def uri(self, key: str) -> str:
        """The location of ``key`` under the root (checked: no escape from it)."""
        if not self.root:
            raise ImageRefused("image: this app takes no images (no image_root configured)")
        if not KEY.fullmatch(key) or ".." in key.split("/") or "//" in key:
            raise ImageRefused("image: give a relative key under the image root (letters, digits, . _ - /; no '..')")
        if storage.is_s3(self.root):
            return storage.join(self.root, key)
        root = os.path.realpath(self.root)
        path = os.path.realpath(os.path.join(root, key))
        if os.path.commonpath([root, path]) != root:
            raise ImageRefused("image: the key leads out of the image root")
        return path

    def locate(self, key_or_uri: str) -> str:
        """:meth:`uri` of a key, or of a location under the root (a record stored by an earlier
        version, checked again: a stored record is not trusted)."""
        return self.uri(self._key(key_or_uri))

    def read(self, key_or_uri: str) -> bytes:
        """The image's bytes (at most ``max_bytes``) of a key or location (see :meth:`locate`)."""
        uri = self.locate(key_or_uri)
        if storage.is_s3(uri):
            fs, path = storage.resolve(uri)
            try:
                info = fs.get_file_info(path)
                if info.type != pafs.FileType.File:
                    raise ImageRefused("image: no such image under the image root")
                if info.size is not None and info.size > self.max_bytes:
                    raise ImageRefused(f"image: over the {self.max_bytes}-byte limit")
                with fs.open_input_stream(path) as fh:
                    data = fh.read(self.max_bytes + 1)
            except OSError as exc:
                raise ImageRefused(f"image: cannot be read ({type(exc).__name__})") from None
        else:
            try:
                fd = os.open(uri, os.O_RDONLY | os.O_NONBLOCK)
            except OSError:
                raise ImageRefused("image: no such image under the image root") from None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise ImageRefused("image: not a regular file")
                if st.st_size > self.max_bytes:
                    raise ImageRefused(f"image: over the {self.max_bytes}-byte limit")
                with os.fdopen(os.dup(fd), "rb") as fh:
                    data = fh.read(self.max_bytes + 1)
            finally:
                os.close(fd)
        if len(data) > self.max_bytes:
            raise ImageRefused(f"image: over the {self.max_bytes}-byte limit")
        self.check(data)
        return data

    def check(self, data: bytes) -> None:
        """Refuse what is not a decodable image within the pixel cap (checked before decoding)."""
        try:
            with Image.open(io.BytesIO(data), formats=FORMATS) as img:
                w, h = img.size
                if w * h > self.max_pixels:
                    raise ImageRefused(f"image: {w}x{h} is over the {self.max_pixels}-pixel limit")
                img.load()
        except ImageRefused:
            raise
        except Exception as exc:  # noqa: BLE001 -- PIL raises many kinds for a bad file
            raise ImageRefused(f"image: not a readable image ({type(exc).__name__})") from None

    def _key(self, key_or_uri: str) -> str:
        if self.root and not storage.is_s3(self.root):
            root = os.path.realpath(self.root)
            if os.path.isabs(key_or_uri):
                if os.path.commonpath([root, os.path.realpath(key_or_uri)]) != root:
                    raise ImageRefused("image: outside the image root")
                return os.path.relpath(os.path.realpath(key_or_uri), root)
        elif self.root and key_or_uri.startswith(storage.S3_SCHEME):
            prefix = storage.join(self.root, "")
            if not key_or_uri.startswith(prefix):
                raise ImageRefused("image: outside the image root")
            return key_or_uri[len(prefix):]
        return key_or_uri
