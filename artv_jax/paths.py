"""User paths as URIs: local folders, gs://, s3:// and whatever else `etils.epath` reaches.

Every path a user gives (workdir, pretrained weights, data and manual dirs, sample inputs and
outputs) goes through `epath.Path`, never `open`, `os.path` or `pathlib`, so that every host of
a pod reads and writes the same bucket instead of its own `./gs:/...` folder. Tools that only
take local files (ffmpeg, a tokenizer's `from_pretrained`) get a local copy, and outputs are
written to a temporary name and renamed, so a reader never sees half a file.
"""
import contextlib
import os
import shutil
import tempfile
import uuid
from typing import Iterator

from etils import epath

PathLike = str | os.PathLike


def is_local(path: PathLike) -> bool:
  """Whether ``path`` is on this host's filesystem (no URI scheme)."""
  return "://" not in os.fspath(path)


def resolve(path: PathLike) -> epath.Path:
  """``path`` as an epath, made absolute if local (orbax wants absolute paths)."""
  path = epath.Path(path)
  return path if not is_local(path) else epath.Path(os.path.abspath(os.fspath(path)))


@contextlib.contextmanager
def local_copy(path: PathLike) -> Iterator[str]:
  """A local filename or folder name with the contents of ``path``: itself when local, else a
  temporary copy, deleted afterwards."""
  path = epath.Path(path)
  if is_local(path):
    yield os.fspath(path)
    return
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, path.name)
    _copy_tree(path, epath.Path(local))
    yield local


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[str]:
  """A local filename to write; on success its contents become ``path`` in one rename (a copy
  then a rename on remote filesystems), so ``path`` is either the old or the new file."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, path.name)
    yield local
    staged = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    epath.Path(local).copy(staged)
    staged.replace(path)


def write_atomic(path: PathLike, data: bytes | str) -> None:
  """Writes ``data`` to ``path`` through a temporary name and a rename."""
  with atomic_output(path) as local:
    data = data.encode("utf-8") if isinstance(data, str) else data
    with open(local, "wb") as f:  # A local temporary file.
      f.write(data)


def copy_tree(src: PathLike, dst: PathLike) -> None:
  """Copies a file or a folder (recursively) between any two filesystems epath reaches."""
  _copy_tree(epath.Path(src), epath.Path(dst))


def _copy_tree(src: epath.Path, dst: epath.Path) -> None:
  if is_local(src) and is_local(dst):
    if src.is_dir():
      shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
      dst.parent.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(src, dst)
    return
  if not src.is_dir():
    dst.parent.mkdir(parents=True, exist_ok=True)
    src.copy(dst, overwrite=True)
    return
  dst.mkdir(parents=True, exist_ok=True)
  for child in src.iterdir():
    _copy_tree(child, dst / child.name)
