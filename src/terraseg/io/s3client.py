"""S3 clients for the run's output store (:mod:`terraseg.io.objstore`): one per process
and endpoint, configured from the variables :mod:`terraseg.io.remote` maps for GDAL reads,
and S3 errors as one line that names the URL and the fix."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from terraseg.errors import ConfigError

__all__ = ["s3_client_options", "s3_failure"]

_TRUE = ("1", "TRUE", "YES", "ON")


_CLIENTS: dict[tuple[Any, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()
_CLIENT_ENV = (
    "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_S3_ENDPOINT", "AWS_HTTPS",
    "AWS_VIRTUAL_HOSTING", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_NO_SIGN_REQUEST",
    "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
)


def s3_client_options(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``endpoint_url``, ``region_name`` and botocore settings for an S3 client, from the env.

    The same variables :func:`terraseg.io.remote.gdal_options` maps for GDAL.

    Examples
    --------
    >>> o = s3_client_options({"AWS_S3_ENDPOINT": "127.0.0.1:9000", "AWS_HTTPS": "NO"})
    >>> o["endpoint_url"], o["addressing_style"], o["region_name"], o["unsigned"]
    ('http://127.0.0.1:9000', 'path', None, False)
    >>> s3_client_options({"AWS_ENDPOINT_URL": "https://minio.lan", "AWS_REGION": "eu-west-1",
    ...                    "AWS_VIRTUAL_HOSTING": "TRUE"})["addressing_style"]
    'virtual'
    """
    env = os.environ if environ is None else environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    if endpoint is None and env.get("AWS_S3_ENDPOINT"):  # GDAL's name: host[:port]
        https = env.get("AWS_HTTPS", "YES").upper() in _TRUE
        endpoint = f"{'https' if https else 'http'}://{env['AWS_S3_ENDPOINT']}"
    elif endpoint is not None and "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    style = None
    if endpoint is not None:  # a custom server (MinIO, moto, Ceph) is addressed by path
        style = "virtual" if env.get("AWS_VIRTUAL_HOSTING", "").upper() in _TRUE else "path"
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None
    return {"endpoint_url": endpoint, "region_name": region, "addressing_style": style,
            "unsigned": env.get("AWS_NO_SIGN_REQUEST", "").upper() in _TRUE}


def _s3_client(url: str, *, probe: bool = False) -> Any:
    """This process's boto3 S3 client for the current environment (cached, thread-safe).

    ``probe`` gives a client that fails fast (one retry, short timeouts) for
    :func:`check_store`.
    """
    key = (os.getpid(), probe, tuple(os.environ.get(k) for k in _CLIENT_ENV))
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is not None:
            return client
        try:
            import boto3
            import botocore
            from botocore.config import Config
        except ImportError as exc:
            raise ConfigError(
                f"output store '{url}' needs boto3, which is not installed; "
                "pip install 'terraseg[s3]'", url=url) from exc
        opts = s3_client_options()
        config = Config(
            connect_timeout=5 if probe else 10, read_timeout=20 if probe else 120,
            retries={"max_attempts": 2 if probe else 5, "mode": "standard"},
            s3={"addressing_style": opts["addressing_style"]} if opts["addressing_style"] else None,
            signature_version=botocore.UNSIGNED if opts["unsigned"] else None)
        client = boto3.session.Session().client(
            "s3", endpoint_url=opts["endpoint_url"], region_name=opts["region_name"],
            config=config)
        _CLIENTS[key] = client
        return client


def _is_s3_error(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] in ("botocore", "boto3", "s3transfer")


def _error_code(exc: BaseException) -> tuple[str, int | None]:
    """``(code, http status)`` of a botocore ``ClientError`` (or of what it wraps)."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return code, status if isinstance(status, int) else None
        seen = seen.__cause__ or seen.__context__
    return "", None


def s3_failure(bucket: str, exc: BaseException) -> str:
    """``"reason; fix"`` for a failed S3 request, in one line."""
    name = type(exc).__name__
    code, status = _error_code(exc)
    endpoint = s3_client_options()["endpoint_url"] or "the AWS S3 endpoint"
    if code == "NoSuchBucket" or (code in ("404", "NotFound") and name == "ClientError"):
        return (f"bucket '{bucket}' does not exist; create it (aws s3 mb s3://{bucket}) or "
                "fix the URL")
    if status in (401, 403) or code in ("AccessDenied", "InvalidAccessKeyId",
                                        "SignatureDoesNotMatch"):
        return (f"access denied (HTTP {status or 403}, {code or 'AccessDenied'}); set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for a key that may "
                "read, write and delete under the URL")
    if name in ("NoCredentialsError", "PartialCredentialsError", "ProfileNotFound"):
        return (f"no usable AWS credentials ({exc}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE to a profile in ~/.aws/config)")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError",
                "ReadTimeoutError"):
        return (f"cannot reach the S3 endpoint {endpoint} ({name}); check AWS_ENDPOINT_URL_S3 / "
                "AWS_ENDPOINT_URL and that the server is running")
    first = (str(exc).strip().splitlines() or [name])[0]
    return f"{first}; check the URL, the credentials and that the server is reachable"
