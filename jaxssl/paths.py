"""One file layer for every path jaxssl reads or writes: local and `gs://`.

Every workdir, checkpoint, metric, export and input path goes through
`etils.epath` (which orbax also uses for its checkpoint directories), so a
`--workdir=gs://bucket/run` behaves like a local one: nothing is turned into a
local folder `./gs:/bucket/run`, and no URL is ever `os.path.abspath`-ed.

`gs://` goes through fsspec's `gcsfs`, also where TensorFlow is installed
(`EPATH_USE_TF=false`): one implementation on TPU VMs, on GPU machines
without TensorFlow and in tests. It honours `STORAGE_EMULATOR_HOST` (a GCS
emulator, e.g. `fake-gcs-server`), which TensorFlow's own GCS filesystem
does not. Orbax writes array data with tensorstore, which ignores
`STORAGE_EMULATOR_HOST`; when that variable is set, `configure` points
tensorstore's `TENSORSTORE_GCS_HTTP_URL` at the same emulator.
"""

import os
from typing import Union

from etils import epath

Path = epath.Path
PathLike = Union[str, os.PathLike]
URL_SCHEMES = ("gs://",)


def is_url(path: PathLike) -> bool:
  """Whether `path` names an object store (`gs://...`) rather than a file."""
  return os.fspath(path).startswith(URL_SCHEMES)


def _use_gcsfs() -> None:
  """`EPATH_USE_TF=false` unless the user chose otherwise. etils caches its
  choice of backend at the first path operation; if that happened before
  (with TensorFlow's GCS filesystem chosen), the choice is made again."""
  os.environ.setdefault("EPATH_USE_TF", "false")
  from etils.epath import gpath  # pylint: disable=g-import-not-at-top
  chosen = getattr(gpath, "_is_tf_installed", None)
  if chosen is not None and hasattr(chosen, "cache_clear"):
    chosen.cache_clear()


def configure() -> None:
  """Routes `gs://` through gcsfs; with `STORAGE_EMULATOR_HOST`, points
  tensorstore and gcsfs at the emulator. Idempotent; variables the user set
  are kept. Runs at import and again before each `gs://` path is made
  (`path`), so variables set later (a test's emulator) are seen."""
  _use_gcsfs()
  emulator = os.environ.get("STORAGE_EMULATOR_HOST")
  if emulator:
    if "://" not in emulator:
      emulator = f"http://{emulator}"
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", emulator)
    # An emulator needs no credentials; without a token tensorstore looks
    # for gcloud's and logs an error before going on anonymously.
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
    # gcsfs's default client also asks GCS's storage-control API for the
    # bucket type, which an emulator does not serve.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


configure()


def path(p: PathLike) -> epath.Path:
  """`p` as an `epath.Path`: local paths made absolute, URLs unchanged."""
  if isinstance(p, epath.Path) and not is_url(p):
    return p
  if is_url(p):
    configure()
    return epath.Path(os.fspath(p))
  return epath.Path(os.path.abspath(os.fspath(p)))


def makedirs(p: PathLike) -> epath.Path:
  """Creates directory `p` and its parents (a no-op for an existing one)."""
  out = path(p)
  out.mkdir(parents=True, exist_ok=True)
  return out


def write_bytes(p: PathLike, data: bytes) -> None:
  """Writes `data` to `p` whole: a temporary sibling renamed into place on
  local disks (readers never see half a file); one object upload on GCS,
  which is atomic already."""
  target = path(p)
  if is_url(target):
    target.write_bytes(data)
    return
  tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
  tmp.write_bytes(data)
  os.replace(tmp, target)


def write_text(p: PathLike, text: str) -> None:
  """`write_bytes` of `text` in UTF-8."""
  write_bytes(p, text.encode("utf-8"))


def read_object_range(url: PathLike, offset: int, size: int) -> bytes:
  """Bytes `[offset, offset + size)` of object `url` (one ranged request;
  thread-safe)."""
  import fsspec  # pylint: disable=g-import-not-at-top
  configure()
  fs, name = fsspec.core.url_to_fs(os.fspath(url))
  return fs.cat_file(name, start=offset, end=offset + size)


def move(src: PathLike, dst: PathLike) -> epath.Path:
  """Moves file or directory `src` to `dst` (whose parent is created):
  a rename on local disks, copy-then-delete of every object on GCS.
  Returns `dst`."""
  src, dst = path(src), path(dst)
  if is_url(src) != is_url(dst):
    raise ValueError(f"cannot move {src} to {dst}: one file system only")
  if is_url(src):
    import fsspec  # pylint: disable=g-import-not-at-top
    configure()
    fs, name = fsspec.core.url_to_fs(os.fspath(src))
    _, target = fsspec.core.url_to_fs(os.fspath(dst))
    fs.mv(name, target, recursive=True)
    return dst
  dst.parent.mkdir(parents=True, exist_ok=True)
  os.replace(src, dst)
  return dst
