"""Images of runtime items come only from the image root, within byte and pixel caps (no Ray)."""

import io
import os

import pytest
from PIL import Image

from serving.core.images import ImageRefused, ImageSource


def _png(w: int, h: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "images"
    (r / "shoes").mkdir(parents=True)
    (r / "shoes" / "ok.png").write_bytes(_png(32, 32))
    (r / "big.png").write_bytes(_png(400, 400))  # 160k pixels, small file
    (r / "huge.bin").write_bytes(b"\0" * 20_000)
    (r / "not-an-image.txt").write_text("hello")
    os.symlink("/etc/passwd", r / "passwd")  # a link out of the root
    os.symlink("/dev/zero", r / "zero")
    os.mkfifo(r / "fifo")
    return r


def test_only_keys_under_the_root_are_read(root):
    src = ImageSource(str(root), max_bytes=10_000, max_pixels=100_000)
    assert src.read("shoes/ok.png")[:4] == b"\x89PNG"
    assert src.read(src.uri("shoes/ok.png"))[:4] == b"\x89PNG"  # a stored location is checked again
    for key, why in [("/etc/passwd", "outside the image root"), ("../images/shoes/ok.png", "relative key"),
                     ("shoes/../../x", "relative key"), ("s3://bucket/x.png", "relative key"),
                     ("passwd", "out of the image root"), ("zero", "out of the image root"),
                     ("fifo", "not a regular file"), ("absent.png", "no such image"),
                     ("huge.bin", "10000-byte limit"), ("big.png", "100000-pixel limit"),
                     ("not-an-image.txt", "not a readable image")]:
        with pytest.raises(ImageRefused, match=why):
            src.read(key)
    with pytest.raises(ImageRefused, match="outside the image root"):
        src.read("/etc/hostname")  # an absolute location (as a tampered record would hold)


def test_no_root_means_no_images(root):
    with pytest.raises(ImageRefused, match="no image_root"):
        ImageSource(None).read("shoes/ok.png")


def test_a_decompression_bomb_is_refused_before_decoding():
    bomb = _png(5000, 5000)  # 25 MP of one colour compresses to a few KB
    assert len(bomb) < 200_000
    with pytest.raises(ImageRefused, match="pixel limit"):
        ImageSource("/nonexistent", max_pixels=1_000_000).check(bomb)
