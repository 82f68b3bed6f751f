"""The run's output store: a local (shared) folder or an ``s3://bucket/prefix``.

Dask workers write their own outputs through a :class:`Store`. A store holds only
its URL, so it pickles into a task cheaply and carries no secret: each process
opens its own S3 client, lazily, from its own environment. Objects are named by
relative POSIX paths (``"scene/classes.tif"``, ``".chunks/000012.npz"``). Every
write is atomic: readers see the old object or the whole new one (a folder: a
temporary sibling, hidden from listings, then ``os.replace``; S3: an object
appears when its PUT or multipart upload completes).

S3 goes through boto3 (``pip install 'terraseg[s3]'``), configured by the
variables :mod:`terraseg.io.remote` maps for GDAL reads (:func:`s3_client_options`),
so one environment serves reads and writes.
"""

from __future__ import annotations

import abc
import contextlib
import glob
import io
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from terraseg.errors import ConfigError, ExportError
from terraseg.io.remote import gdal_options
from terraseg.io.s3client import (
    _error_code,
    _is_s3_error,
    _s3_client,
    s3_client_options,
    s3_failure,
)

__all__ = ["LocalStore", "S3Store", "Store", "check_store", "open_store", "s3_client_options",
           "s3_failure", "staged_file"]

#: Temporaries beside their target, hidden from listings (also atomic.tmp_name's pattern).
_TMP_RE = re.compile(r"^\..*\.\d+-[0-9a-f]{8}\.tmp")


#: The folder under a scene's output folder where a run's tasks write the outputs; the
#: driver moves them into the scene's folder together, ``run.json`` last, once the scene
#: is finished, so a failed or killed run never leaves half a set of outputs.
STAGE_DIR = ".publish"


def _check_name(name: str, *, prefix: bool = False) -> str:
    """``name`` if it is a relative POSIX object name; a prefix may be '' or end in '/'."""
    body = name[:-1] if prefix and name.endswith("/") else name
    if (name or not prefix) and ("\\" in name or "\0" in name
                                 or any(p in ("", ".", "..") for p in body.split("/"))):
        raise ConfigError(
            f"object name {name!r} is not a relative path; use names like 'scene/classes.tif' "
            "(no leading '/', no '..', no empty parts)", name=name)
    return name


def _tmp_path(target: Path, suffix: str | None = None) -> Path:
    """A unique hidden temporary sibling of ``target`` ending in ``suffix`` (default: its own)."""
    tail = target.suffix if suffix is None else suffix
    return target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{tail}")


def _remove_quietly(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class Store(abc.ABC):
    """Where a run's outputs go: a local folder or an S3 prefix (see :func:`open_store`).

    Picklable and cheap to pickle: a store holds only its root. Names are
    relative POSIX paths below the root. Missing objects raise ``KeyError``
    naming the full URL; other I/O failures raise
    :class:`~terraseg.errors.ExportError` with one line naming the URL and the fix.
    """

    __slots__ = ()

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """``"s3://bucket/prefix"`` or the absolute path of the folder."""

    @property
    def is_local(self) -> bool:
        """Whether objects are plain files (:meth:`local_path` works)."""
        return False

    def url_of(self, name: str) -> str:
        """The full URL (or path) of the object ``name``."""
        return f"{self.url.rstrip('/')}/{_check_name(name)}"

    @abc.abstractmethod
    def put_bytes(self, name: str, data: bytes) -> None:
        """Write ``data`` as ``name``, atomically (readers see the old or the whole new object)."""

    @abc.abstractmethod
    def get_bytes(self, name: str) -> bytes:
        """The content of ``name``; ``KeyError`` when it does not exist."""

    @abc.abstractmethod
    def exists(self, name: str) -> bool:
        """Whether the object ``name`` exists (a complete one: temporaries do not count)."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Names of the objects whose name starts with ``prefix`` (a string prefix), sorted."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete every object whose name starts with ``prefix``; ``''`` empties the store."""

    @abc.abstractmethod
    def child(self, name: str) -> Store:
        """The store rooted at ``name`` below this one (per scene, or ``".chunks"``)."""

    @abc.abstractmethod
    def move(self, name: str, dest: Store, dest_name: str) -> None:
        """Move object ``name`` to ``dest_name`` in ``dest`` (a store of the same kind):
        a rename in a folder, a server-side copy then delete in object storage."""

    @abc.abstractmethod
    def put_file(self, local_path: str | os.PathLike[str], name: str) -> None:
        """Copy the finished local file ``local_path`` to ``name``, atomically."""

    @abc.abstractmethod
    def get_file(self, name: str, local_path: str | os.PathLike[str]) -> None:
        """Copy ``name`` to ``local_path`` (replaced atomically); ``KeyError`` when missing."""

    @abc.abstractmethod
    def gdal_path(self, name: str) -> str:
        """What rasterio / pyogrio open (in :meth:`gdal_env`): a path or ``/vsis3/b/key``."""

    def gdal_env(self, name: str = "") -> contextlib.AbstractContextManager[Any]:
        """The ``rasterio.Env`` to open :meth:`gdal_path` in, in the opening thread."""
        return contextlib.nullcontext()

    def local_path(self, name: str) -> Path:
        """The file of ``name`` in a local store; :class:`ConfigError` for a remote one."""
        raise ConfigError(
            f"store '{self.url}' is not a local folder; use gdal_path(), get_file() or "
            "staged_file() for its objects", url=self.url)

    def put_arrays(self, name: str, arrays: Mapping[str, np.ndarray[Any, Any]], *,
                   compress: bool = False) -> None:
        """Write ``arrays`` as one ``.npz`` object (``np.savez``; zipped when ``compress``)."""
        buf = io.BytesIO()
        if compress:
            np.savez_compressed(buf, **dict(arrays))  # type: ignore[arg-type]
        else:
            np.savez(buf, **dict(arrays))  # type: ignore[arg-type]
        self.put_bytes(name, buf.getvalue())

    def get_arrays(self, name: str) -> dict[str, np.ndarray[Any, Any]]:
        """The arrays of an ``.npz`` object written by :meth:`put_arrays`."""
        data = self.get_bytes(name)
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
        except (OSError, ValueError) as exc:
            raise ExportError(
                f"'{self.url_of(name)}' is not an .npz archive ({exc}); delete it and rerun",
                url=self.url_of(name)) from exc

    def __dask_tokenize__(self) -> tuple[str, str]:
        return (type(self).__name__, self.url)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


@dataclass(frozen=True, slots=True, repr=False)
class LocalStore(Store):
    """A store in a local or shared folder (made on the first write)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(os.path.abspath(os.path.expanduser(self.root))))

    @property
    def url(self) -> str:
        return str(self.root)

    @property
    def is_local(self) -> bool:
        return True

    def local_path(self, name: str) -> Path:
        return self.root / _check_name(name)

    def put_bytes(self, name: str, data: bytes) -> None:
        _replace_atomically(self.local_path(name), lambda tmp: tmp.write_bytes(data))

    def get_bytes(self, name: str) -> bytes:
        path = self.local_path(name)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise KeyError(f"{path}: no such object in the store") from exc
        except OSError as exc:
            raise ExportError(f"cannot read '{path}': {exc.strerror or exc}; check its "
                              "permissions", url=str(path)) from exc

    def exists(self, name: str) -> bool:
        return self.local_path(name).is_file()

    def _walk(self, prefix: str, *, temps: bool) -> Iterator[tuple[str, Path]]:
        """``(name, file)`` of the files below the root whose name starts with ``prefix``."""
        _check_name(prefix, prefix=True)
        start = self.root / prefix.rpartition("/")[0]
        for folder, dirs, files in os.walk(start):
            dirs.sort()
            rel = Path(folder).relative_to(self.root).as_posix()
            for file in files:
                name = file if rel == "." else f"{rel}/{file}"
                if name.startswith(prefix) and (temps or not _TMP_RE.match(file)):
                    yield name, Path(folder) / file

    def list(self, prefix: str = "") -> list[str]:
        return sorted(name for name, _ in self._walk(prefix, temps=False))

    def delete_prefix(self, prefix: str) -> None:
        _check_name(prefix, prefix=True)
        with _local_errors(self.root / prefix, "delete"):
            if prefix == "":
                if self.root.is_dir():
                    for entry in self.root.iterdir():
                        _remove_quietly(entry)
                return
            for _, path in self._walk(prefix, temps=True):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            start = self.root / prefix.rpartition("/")[0]
            for folder, _, _ in sorted(os.walk(start), key=lambda w: -len(w[0])):
                rel = Path(folder).relative_to(self.root).as_posix() + "/"
                if rel.startswith(prefix):
                    with contextlib.suppress(OSError):  # not empty: a concurrent writer's
                        os.rmdir(folder)

    def child(self, name: str) -> LocalStore:
        return LocalStore(self.local_path(name))

    def move(self, name: str, dest: Store, dest_name: str) -> None:
        target = dest.local_path(dest_name)
        with _local_errors(target, "write"):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.local_path(name), target)

    def put_file(self, local_path: str | os.PathLike[str], name: str) -> None:
        _replace_atomically(self.local_path(name), lambda tmp: shutil.copyfile(local_path, tmp))

    def get_file(self, name: str, local_path: str | os.PathLike[str]) -> None:
        src = self.local_path(name)
        if not src.is_file():
            raise KeyError(f"{src}: no such object in the store")
        _replace_atomically(Path(local_path), lambda tmp: shutil.copyfile(src, tmp))

    def gdal_path(self, name: str) -> str:
        return str(self.local_path(name))


@contextlib.contextmanager
def _local_errors(path: Path, action: str) -> Iterator[None]:
    """Turn an ``OSError`` (other than a TerrasegError) into a one-line ExportError."""
    try:
        yield
    except ExportError:
        raise
    except OSError as exc:
        raise ExportError(
            f"cannot {action} '{path}': {exc.strerror or exc}; check free disk space and the "
            "folder's permissions", url=str(path)) from exc


def _replace_atomically(dest: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary sibling of ``dest``, then ``os.replace`` it; no temporary survives."""
    with _local_errors(dest, "write"):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_path(dest)
        try:
            write(tmp)
            os.replace(tmp, dest)
        except BaseException:
            _remove_quietly(tmp)
            raise


@dataclass(frozen=True, slots=True, repr=False)
class S3Store(Store):
    """A store under ``s3://bucket/prefix`` (an S3 or S3-compatible server)."""

    bucket: str
    prefix: str = ""

    def __post_init__(self) -> None:
        if not self.bucket or "/" in self.bucket:
            raise ConfigError(f"S3 bucket name {self.bucket!r} is invalid; write "
                              "s3://bucket/prefix", bucket=self.bucket)
        object.__setattr__(self, "prefix", _check_name(self.prefix.strip("/"), prefix=True))

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, name: str) -> str:
        """The S3 key of ``name``."""
        return f"{self.prefix}/{_check_name(name)}" if self.prefix else _check_name(name)

    def _root(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    @contextlib.contextmanager
    def _errors(self, name: str, action: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            if not _is_s3_error(exc):
                raise
            where = self.url_of(name) if name else self.url
            code, status = _error_code(exc)
            missing = code in ("NoSuchKey", "404", "NotFound") or (
                status == 404 and code != "NoSuchBucket")
            if missing and action == "read":
                raise KeyError(f"{where}: no such object in the store") from exc
            raise ExportError(f"cannot {action} '{where}': {s3_failure(self.bucket, exc)}",
                              url=where) from exc

    def put_bytes(self, name: str, data: bytes) -> None:
        with self._errors(name, "write"):
            _s3_client(self.url).put_object(Bucket=self.bucket, Key=self.key(name), Body=data)

    def get_bytes(self, name: str) -> bytes:
        with self._errors(name, "read"):
            response = _s3_client(self.url).get_object(Bucket=self.bucket, Key=self.key(name))
            return bytes(response["Body"].read())

    def exists(self, name: str) -> bool:
        try:
            with self._errors(name, "read"):
                _s3_client(self.url).head_object(Bucket=self.bucket, Key=self.key(name))
        except KeyError:
            return False
        return True

    def _keys(self, prefix: str) -> Iterator[str]:
        pages = _s3_client(self.url).get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._root() + _check_name(prefix, prefix=True))
        for page in pages:
            yield from (str(item["Key"]) for item in page.get("Contents", []))

    def list(self, prefix: str = "") -> list[str]:
        root = len(self._root())
        with self._errors(prefix, "list"):
            return sorted(key[root:] for key in self._keys(prefix))

    def delete_prefix(self, prefix: str) -> None:
        with self._errors(prefix, "delete"):
            client = _s3_client(self.url)
            keys = list(self._keys(prefix))
            for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys at most
                batch = [{"Key": k} for k in keys[start : start + 1000]]
                response = client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                if errors := response.get("Errors"):
                    raise ExportError(
                        f"cannot delete 's3://{self.bucket}/{errors[0].get('Key')}' and "
                        f"{len(errors) - 1} more: {errors[0].get('Code')}; check that the "
                        "credentials may delete under the URL", url=self.url)

    def child(self, name: str) -> S3Store:
        return S3Store(self.bucket, self.key(name))

    def move(self, name: str, dest: Store, dest_name: str) -> None:
        if not isinstance(dest, S3Store):
            raise ConfigError(f"cannot move '{self.url_of(name)}' to another kind of store")
        with self._errors(name, "write"):  # managed copy: multipart above 8 MiB, server-side
            client = _s3_client(self.url)
            client.copy({"Bucket": self.bucket, "Key": self.key(name)}, dest.bucket,
                        dest.key(dest_name))
            client.delete_object(Bucket=self.bucket, Key=self.key(name))

    def put_file(self, local_path: str | os.PathLike[str], name: str) -> None:
        with self._errors(name, "write"):  # multipart above 8 MiB: appears on completion
            _s3_client(self.url).upload_file(os.fspath(local_path), self.bucket, self.key(name))

    def get_file(self, name: str, local_path: str | os.PathLike[str]) -> None:
        key = self.key(name)
        with self._errors(name, "read"):
            _replace_atomically(Path(local_path), lambda tmp: _s3_client(self.url).download_file(
                self.bucket, key, str(tmp)))

    def gdal_path(self, name: str) -> str:
        return f"/vsis3/{self.bucket}/{self.key(name)}"

    def gdal_env(self, name: str = "") -> contextlib.AbstractContextManager[Any]:
        """A ``rasterio.Env`` for ``/vsis3/`` reads, with GDAL's URL cache off for the store.

        GDAL caches what it fetched per URL for the life of the process; an
        object rewritten through the store would otherwise be read stale.
        """
        import rasterio

        opts = gdal_options(self.gdal_path(name) if name else f"/vsis3/{self.bucket}/x")
        opts["CPL_VSIL_CURL_NON_CACHED"] = f"/vsis3/{self.bucket}/{self._root()}"
        env: contextlib.AbstractContextManager[Any] = rasterio.Env(**opts)
        return env


def open_store(url_or_path: str | os.PathLike[str] | Store) -> Store:
    """The store at ``url_or_path``: ``s3://bucket/prefix`` (or ``/vsis3/...``) or a folder.

    Examples
    --------
    >>> open_store("s3://runs/2026/a/")
    S3Store('s3://runs/2026/a')
    >>> open_store("/data/out").child("scene").url
    '/data/out/scene'
    """
    if isinstance(url_or_path, Store):
        return url_or_path
    text = os.fspath(url_or_path)
    for lead in ("s3://", "/vsis3/"):
        if text.startswith(lead):
            bucket, _, prefix = text[len(lead):].partition("/")
            if not bucket:
                raise ConfigError(f"S3 URL '{text}' has no bucket; write s3://bucket/prefix",
                                  url=text)
            return S3Store(bucket, prefix)
    if text.startswith("file://"):
        return LocalStore(Path(text[len("file://"):]))
    head, sep, _ = text.partition("://")
    if sep and "/" not in head:
        raise ConfigError(f"output store '{text}' has an unsupported scheme '{head}://'; use a "
                          "folder or s3://bucket/prefix", url=text)
    return LocalStore(Path(text))


def check_store(store: Store) -> None:
    """Probe ``store`` once, cheaply, before any compute: write a tiny object and delete it.

    Raises
    ------
    ConfigError
        One line naming the URL and the fix: the folder cannot be made or written;
        the bucket does not exist; the endpoint does not answer; there are no
        credentials, or they may not write or delete; boto3 is not installed.
    """
    probe = f".terraseg-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if isinstance(store, LocalStore):
        try:
            store.root.mkdir(parents=True, exist_ok=True)
            (store.root / probe).write_bytes(b"")
            (store.root / probe).unlink()
        except OSError as exc:
            raise ConfigError(
                f"output store '{store.url}' is not a writable folder: {exc.strerror or exc}; "
                "choose a writable folder or fix its permissions", url=store.url) from exc
        return
    if not isinstance(store, S3Store):
        raise ConfigError(f"unknown store type {type(store).__name__}; use open_store()")
    client = _s3_client(store.url, probe=True)
    try:
        client.put_object(Bucket=store.bucket, Key=store.key(probe), Body=b"")
        client.delete_object(Bucket=store.bucket, Key=store.key(probe))
    except Exception as exc:
        if _is_s3_error(exc):
            raise ConfigError(f"output store '{store.url}' cannot be written: "
                              f"{s3_failure(store.bucket, exc)}", url=store.url) from exc
        raise


@contextlib.contextmanager
def staged_file(store: Store, name: str, suffix: str | None = None) -> Iterator[Path]:
    """Yield a local temporary path to write ``name`` to; publish it on a clean exit.

    Write a COG (rasterio) or a GeoPackage (pyogrio) at the yielded path, whose
    extension is ``suffix`` (by default that of ``name``: GDAL picks the driver from
    it). A clean exit publishes it atomically (a folder: ``os.replace``; S3: an
    upload, then the temporary is deleted); :class:`ExportError` if nothing was
    written there. An exception publishes nothing and removes the temporary with
    any sidecar GDAL or SQLite wrote beside it.
    """
    suffix = PurePosixPath(_check_name(name)).suffix if suffix is None else suffix
    if store.is_local:
        target = store.local_path(name)
        with _local_errors(target, "write"):
            target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_path(target, suffix)
        folder = None
    else:
        folder = Path(tempfile.mkdtemp(prefix="terraseg-stage-"))
        tmp = folder / f"{PurePosixPath(name).stem}{suffix}"
    try:
        yield tmp
        if not tmp.is_file():
            raise ExportError(f"nothing was written for '{store.url_of(name)}' (expected a file "
                              f"at '{tmp}')", url=store.url_of(name))
        if folder is None:
            with _local_errors(store.local_path(name), "write"):
                os.replace(tmp, store.local_path(name))
        else:
            store.put_file(tmp, name)
    finally:
        for leftover in [folder] if folder else tmp.parent.glob(f"{glob.escape(tmp.name)}*"):
            _remove_quietly(leftover)
