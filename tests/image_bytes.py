"""Encoded image files for the input-pipeline tests."""

import io

from PIL import Image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
  """`image` as the bytes of a `fmt` ('JPEG', 'PNG') file."""
  buf = io.BytesIO()
  image.save(buf, fmt, **kwargs)
  return buf.getvalue()
