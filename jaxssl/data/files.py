"""Image files in folders or zip archives laid out `root/<class>/<file>`.

A folder (or the members of a zip under an optional split prefix such as
`train/`) holds either one sub-folder per class or the images directly
(unlabelled). Zip archives are read in place: no extraction. Folders and
archives may be local or on GCS (`gs://`, through `jaxssl.paths`); a zip on
GCS is read by ranged requests, member by member.
"""

import dataclasses
import os
import struct
import zipfile
import zlib
from typing import Optional

import numpy as np

from jaxssl import paths

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass(frozen=True)
class ImageFiles:
  """Image paths (or zip member names) with optional labels.

  Attributes:
    names: file paths (folder) or member names (zip), sorted.
    labels: `[N]` class indices, or None for an unlabelled folder.
    class_names: sorted class folder names ([] when unlabelled).
    archive: the zip file holding `names`, or None for a folder.
    description: where they came from, for messages.
  """
  names: tuple
  labels: Optional[np.ndarray]
  class_names: tuple
  archive: Optional[str]
  description: str

  def __len__(self) -> int:
    return len(self.names)


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def _from_relative(relative: list, description: str,
                   to_name) -> tuple:
  """Labels from the first path component when every image has one."""
  relative = sorted(relative)
  if not relative:
    raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in "
                     f"{description}")
  depths = {r.count("/") for r in relative}
  if depths == {1}:
    classes = sorted({r.split("/", 1)[0] for r in relative})
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[r.split("/", 1)[0]] for r in relative], np.int32)
  elif depths == {0}:
    classes, labels = [], None
  else:
    raise ValueError(
        f"{description}: expected images either directly inside or in one "
        f"level of class folders (root/<class>/<file>); found depths "
        f"{sorted(depths)}, e.g. {relative[0]!r} and {relative[-1]!r}")
  return tuple(to_name(r) for r in relative), labels, tuple(classes)


def list_images(path: str, split: Optional[str] = None) -> ImageFiles:
  """Lists the images of a folder or zip, under sub-folder `split` if given.

  Args:
    path: a directory or a `.zip` file.
    split: optional sub-folder (e.g. 'train' for `cifar10-jpeg.zip`).

  Returns:
    The sorted files and their labels.

  Raises:
    ValueError: the path does not exist, or holds no images (the message
      names it).
  """
  location = paths.path(path)
  path = os.fspath(path)
  if not location.exists():
    raise ValueError(f"image path {path!r} does not exist")
  if not location.is_dir() and _is_zip(location):
    prefix = f"{split.strip('/')}/" if split else ""
    with location.open("rb") as f, zipfile.ZipFile(f) as zf:
      members = [n for n in zf.namelist()
                 if n.startswith(prefix) and not n.endswith("/") and _is_image(n)]
    description = f"zip {path!r}" + (f" under {prefix!r}" if prefix else "")
    names, labels, classes = _from_relative(
        [m[len(prefix):] for m in members], description, lambda r: prefix + r)
    return ImageFiles(names, labels, classes, path, description)
  if not location.is_dir():
    raise ValueError(f"image path {path!r} is neither a directory nor a zip "
                     "file")
  root = location / split if split else location
  if not root.is_dir():
    raise ValueError(f"split folder {str(root)!r} does not exist")
  relative = [r for r in _relative_files(root) if _is_image(r)]
  names, labels, classes = _from_relative(
      relative, f"folder {str(root)!r}", lambda r: os.fspath(root / r))
  return ImageFiles(names, labels, classes, None, f"folder {str(root)!r}")


def _is_zip(location: paths.Path) -> bool:
  with location.open("rb") as f:
    return zipfile.is_zipfile(f)


def _relative_files(root: paths.Path) -> list:
  """Every file below `root`, as '/'-separated paths relative to it."""
  if paths.is_url(root):
    import fsspec  # pylint: disable=g-import-not-at-top
    fs, base = fsspec.core.url_to_fs(os.fspath(root))
    base = base.rstrip("/") + "/"
    return [f[len(base):] for f in fs.find(base) if f.startswith(base)]
  out = []
  for dirpath, _, filenames in os.walk(root):
    for f in filenames:
      rel = os.path.relpath(os.path.join(dirpath, f), root)
      out.append(rel.replace(os.sep, "/"))
  return out


def reader(listing: ImageFiles):
  """`read(name) -> bytes` for the names of `listing` (zip members or files,
  local or on GCS); b"" for an unreadable one (skipped and counted by the
  input pipeline)."""
  if listing.archive is not None:
    return ZipReader(listing.archive).read

  def read_file(name: str) -> bytes:
    try:
      return paths.path(name).read_bytes()
    except OSError:
      return b""

  return read_file


class ZipReader:
  """Thread-safe random access to zip members by positioned reads.

  The central directory is parsed once, in the constructor; reading a member
  then costs two positioned reads (its local header, then its data: `pread`
  on one descriptor locally, ranged requests on GCS) and, for deflated
  members, a `zlib` inflate — no per-thread `ZipFile` objects and little
  time holding the GIL, so tf.data can call it from many threads.
  """

  def __init__(self, archive: str):
    self.archive = archive
    with paths.path(archive).open("rb") as f, zipfile.ZipFile(f) as zf:
      self._info = {i.filename: (i.header_offset, i.compress_size,
                                 i.compress_type) for i in zf.infolist()}
    self._fd = (None if paths.is_url(archive)
                else os.open(archive, os.O_RDONLY))

  def _pread(self, size: int, offset: int) -> bytes:
    if self._fd is None:
      return paths.read_object_range(self.archive, offset, size)
    return os.pread(self._fd, size, offset)

  def read(self, name: str) -> bytes:
    """The member's bytes, or b"" if it is missing or unreadable."""
    try:
      offset, size, method = self._info[name]
      header = self._pread(30, offset)
      if len(header) < 30 or header[:4] != b"PK\x03\x04":
        return b""
      name_len, extra_len = struct.unpack("<HH", header[26:30])
      data = self._pread(size, offset + 30 + name_len + extra_len)
      if method == zipfile.ZIP_STORED:
        return data
      if method == zipfile.ZIP_DEFLATED:
        return zlib.decompress(data, -15)
    except (KeyError, OSError, zlib.error):
      pass
    return b""  # decoded as an error downstream: skipped and counted

  def __del__(self):
    fd = getattr(self, "_fd", None)
    if fd is not None:
      os.close(fd)
