"""Scenes that live on a web server or in object storage, read through GDAL's network drivers.

``http(s)://`` URLs are read with HTTP range requests through ``/vsicurl/``,
``s3://bucket/key`` through ``/vsis3/`` and ``gs://`` through ``/vsigs/``
(:func:`to_gdal_path`). Only the bytes of the blocks a window touches are
fetched, so a cloud-optimized GeoTIFF (COG) is read chunk by chunk without a
download.

Credentials and endpoints come from the environment, the way AWS users set
them: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` and
``AWS_NO_SIGN_REQUEST`` are read by GDAL itself; ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` (the AWS CLI's and boto3's names for an S3-compatible
server such as MinIO) become GDAL's ``AWS_S3_ENDPOINT``, ``AWS_HTTPS`` and
``AWS_VIRTUAL_HOSTING`` here (:func:`gdal_options`). Nothing is stored in a
:class:`~terraseg.io.scene.Scene`, so secrets never travel in a Dask graph:
each worker reads its own environment when it opens the scene.

Every read of a remote scene runs inside :func:`remote_env`, a ``rasterio.Env``
entered by the reading thread itself (rasterio sets the options of a
non-main thread thread-locally, so concurrent readers do not disturb each other).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

__all__ = [
    "RemoteLayoutWarning",
    "gdal_options",
    "is_remote",
    "remote_env",
    "remote_failure",
    "source_stem",
    "striped_read_factor",
    "to_gdal_path",
]

_SCHEMES = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/"}
_VSI_NETWORK = ("/vsicurl", "/vsis3", "/vsigs", "/vsiaz", "/vsiadls", "/vsioss", "/vsiswift",
                "/vsiwebhdfs")

#: GDAL settings for every remote read (an environment variable of the same name wins).
#: No directory listing at open (a COG has no sidecar files), consecutive ranges
#: merged into one request, a few retries on 429/5xx, and GDAL's block-range cache.
HTTP_OPTIONS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "VSI_CACHE": "TRUE",
}


class RemoteLayoutWarning(UserWarning):
    """A remote scene whose layout makes every window read download far more than it needs."""


def _scheme(path: str) -> str:
    head, sep, _ = path.partition("://")
    return head.lower() if sep and "/" not in head else ""


def is_remote(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is read over the network (a URL or a GDAL network path).

    Examples
    --------
    >>> is_remote("s3://bucket/a.tif"), is_remote("/vsicurl/https://x/a.tif"), is_remote("a.tif")
    (True, True, False)
    """
    text = os.fspath(path)
    return _scheme(text) in _SCHEMES or text.startswith(_VSI_NETWORK)


def to_gdal_path(path: str | os.PathLike[str]) -> str:
    """The path GDAL opens for ``path``: ``/vsicurl/`` for http(s), ``/vsis3/`` for s3...

    Local paths and GDAL virtual paths are returned unchanged.

    Examples
    --------
    >>> to_gdal_path("https://host/data/scene.tif?sig=1")
    '/vsicurl/https://host/data/scene.tif?sig=1'
    >>> to_gdal_path("s3://bucket/key/scene.tif")
    '/vsis3/bucket/key/scene.tif'
    >>> to_gdal_path("scene.tif")
    'scene.tif'
    """
    text = os.fspath(path)
    scheme = _scheme(text)
    if scheme in ("http", "https"):
        return _SCHEMES[scheme] + text
    if scheme in _SCHEMES:
        return _SCHEMES[scheme] + text.split("://", 1)[1]
    return text


def _url_path(path: str) -> str:
    """The file path part of a URL or GDAL network path (no query, no fragment)."""
    text = path
    for prefix in _VSI_NETWORK:
        if text.startswith(prefix + "/"):
            text = text[len(prefix) + 1 :]
            break
    if "://" in text:
        parts = urllib.parse.urlsplit(text)
        return (parts.netloc if parts.scheme in ("s3", "gs") else "") + "/" + parts.path
    return text


def source_stem(path: str | os.PathLike[str]) -> str:
    """A file stem for a scene's outputs: the URL's or path's file name without extension.

    Query strings (signed URLs) are dropped, and characters that are awkward in
    file names become ``_``.

    Examples
    --------
    >>> source_stem("https://host/a/b/scene%201.tif?X-Amz-Signature=ab")
    'scene_1'
    >>> source_stem("s3://bucket/tiles/2024/city.tif"), source_stem("/data/c.tif")
    ('city', 'c')
    """
    text = os.fspath(path)
    name = PurePosixPath(urllib.parse.unquote(_url_path(text)).rstrip("/")).name
    stem = PurePosixPath(name).stem if "." in name.lstrip(".") else name
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).lstrip(".")
    return safe or "scene"


def _endpoint_options(environ: Mapping[str, str]) -> dict[str, str]:
    """GDAL's S3 endpoint settings from the AWS CLI's ``AWS_ENDPOINT_URL(_S3)``."""
    if environ.get("AWS_S3_ENDPOINT"):
        return {}  # GDAL's own setting: GDAL reads it (and AWS_HTTPS...) itself
    url = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if not url:
        return {}
    parts = urllib.parse.urlsplit(url if "://" in url else f"https://{url}")
    host = parts.netloc + parts.path.rstrip("/")
    opts = {"AWS_S3_ENDPOINT": host}
    if "AWS_HTTPS" not in environ:
        opts["AWS_HTTPS"] = "NO" if parts.scheme == "http" else "YES"
    if "AWS_VIRTUAL_HOSTING" not in environ:
        # a custom server (MinIO, moto, Ceph) is addressed by path: host/bucket/key
        opts["AWS_VIRTUAL_HOSTING"] = "FALSE"
    return opts


def gdal_options(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """GDAL configuration options for reading ``path``; empty for a local file.

    Parameters
    ----------
    path
        The scene's path or URL.
    environ
        The environment to read (``os.environ`` by default). A GDAL option that
        is already set there is left to GDAL (the user's choice wins).

    Examples
    --------
    >>> opts = gdal_options("s3://b/k.tif", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"})
    >>> opts["AWS_S3_ENDPOINT"], opts["AWS_HTTPS"], opts["AWS_VIRTUAL_HOSTING"]
    ('127.0.0.1:9000', 'NO', 'FALSE')
    >>> gdal_options("https://h/scene.tif", {})["CPL_VSIL_CURL_ALLOWED_EXTENSIONS"]
    '.tif'
    """
    text = os.fspath(path)
    if not is_remote(text):
        return {}
    env = os.environ if environ is None else environ
    opts = {k: v for k, v in HTTP_OPTIONS.items() if k not in env}
    suffix = PurePosixPath(_url_path(text)).suffix
    if suffix and "CPL_VSIL_CURL_ALLOWED_EXTENSIONS" not in env:
        # no probing for .ovr/.msk/.aux.xml sidecars: one 404 round trip each
        opts["CPL_VSIL_CURL_ALLOWED_EXTENSIONS"] = suffix
    if text.startswith("s3://") or text.startswith("/vsis3"):
        opts.update(_endpoint_options(env))
    return opts


def remote_env(path: str | os.PathLike[str]) -> contextlib.AbstractContextManager[Any]:
    """A ``rasterio.Env`` with :func:`gdal_options` for a remote ``path``; a no-op for a local one.

    Enter it in the thread that opens or reads the dataset.
    """
    opts = gdal_options(path)
    if not opts:
        return contextlib.nullcontext()
    import rasterio

    env: contextlib.AbstractContextManager[Any] = rasterio.Env(**opts)
    return env


def _http_code(text: str) -> int | None:
    m = re.search(r"HTTP (?:response )?code:?\s*(\d{3})", text, re.IGNORECASE)
    return int(m.group(1)) if m else None


def remote_failure(path: str | os.PathLike[str], exc: BaseException) -> str:
    """``"reason; fix"`` for a failed open or read of a remote scene, in one line.

    Examples
    --------
    >>> remote_failure("https://h/a.tif", OSError("HTTP response code: 404"))
    'HTTP 404 (not found); check the URL'
    """
    text = os.fspath(path)
    cause = exc.__cause__ or exc.__context__
    message = " ".join(str(e) for e in (exc, cause) if e is not None)
    low = message.lower()
    s3 = text.startswith(("s3://", "/vsis3"))
    code = _http_code(message)
    if "range downloading not supported" in low:
        return ("the server does not support HTTP range requests, so windows cannot be read "
                "without downloading the whole file; download it first (curl -O URL) and "
                "predict the local copy, or serve it from a server that supports Range")
    if code == 404 or "nosuchkey" in low or "nosuchbucket" in low or "does not exist" in low:
        where = "the bucket and key" if s3 else "the URL"
        return f"HTTP 404 (not found); check {where}"
    if code in (401, 403) or "accessdenied" in low or "access denied" in low or (
        "invalidaccesskeyid" in low or "signaturedoesnotmatch" in low
    ):
        if s3:
            return (f"HTTP {code or 403} (access denied); set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for a key that may read the "
                    "object, or AWS_NO_SIGN_REQUEST=YES for a public bucket")
        return (f"HTTP {code or 403} (access denied); check that the URL is public, or that "
                "its signature has not expired")
    if "aws_secret_access_key" in low or "credentials" in low:
        return ("no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE), or AWS_NO_SIGN_REQUEST=YES for a public bucket")
    if code is not None:
        return f"HTTP {code} from the server; check the URL and retry later"
    first = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    return f"{first}; check the URL and that the server is reachable"


def striped_read_factor(
    shape: tuple[int, int], block_shape: tuple[int, int], *, chunk_px: int = 2048
) -> float:
    """How many times its size a chunked read of a raster downloads, given its block layout.

    A tiled raster (blocks narrower than the raster) is read block by block:
    factor 1. A striped one is read in whole-width rows, so every column of
    ``chunk_px``-wide chunks downloads every strip it touches again.

    Examples
    --------
    >>> striped_read_factor((8192, 8192), (512, 512))
    1.0
    >>> striped_read_factor((8192, 8192), (1, 8192))
    4.0
    >>> striped_read_factor((8192, 8192), (8192, 8192))  # one strip: each chunk reads it all
    16.0
    """
    rows, cols = shape
    bh, bw = max(1, block_shape[0]), max(1, block_shape[1])
    if bw < cols or rows == 0:
        return 1.0
    fetched = 0
    for r0 in range(0, rows, chunk_px):
        r1 = min(r0 + chunk_px, rows)
        fetched += min(math.ceil(r1 / bh) * bh, rows) - (r0 // bh) * bh
    return math.ceil(cols / chunk_px) * fetched / rows
