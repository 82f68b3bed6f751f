"""The run's output store, on a local folder and on S3 (a loopback moto server on 127.0.0.1).

Every test that takes ``store`` runs twice: on a LocalStore in ``tmp_path`` and on
an S3Store in a fresh bucket of one moto server, which is stopped when the module ends.
"""

from __future__ import annotations

import doctest
import os
import pickle
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from dask.base import tokenize
from rasterio.crs import CRS
from rasterio.transform import from_origin
from remote_helpers import free_port, moto_s3

from terraseg.errors import ConfigError, ExportError
from terraseg.io import objstore, s3client
from terraseg.io.objstore import (
    LocalStore,
    S3Store,
    Store,
    check_store,
    open_store,
    s3_client_options,
    staged_file,
)
from terraseg.io.remote import gdal_options

pytestmark = pytest.mark.timeout(120)

UTM = CRS.from_epsg(32633)
SECRET = "moto-secret-a9f3"
AWS_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_S3_ENDPOINT", "AWS_HTTPS",
            "AWS_VIRTUAL_HOSTING", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_NO_SIGN_REQUEST",
            "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    pytest.importorskip("moto")
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The environment a worker would have: AWS CLI variables pointing at moto."""
    for var in AWS_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    return moto_endpoint


def make_bucket() -> str:
    import boto3

    name = f"runs-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return open_store(tmp_path / "out")
    request.getfixturevalue("s3_env")
    return open_store(f"s3://{make_bucket()}/runs/r1")


def write_tif(path: Path, shape: tuple[int, int], value_seed: int) -> np.ndarray:
    """A small one-band georeferenced uint16 GeoTIFF; returns its pixels."""
    arr = np.random.default_rng(value_seed).integers(0, 60000, (1, *shape), dtype=np.uint16)
    with rasterio.open(path, "w", driver="GTiff", height=shape[0], width=shape[1], count=1,
                       dtype="uint16", crs=UTM,
                       transform=from_origin(433_000.5, 4_650_000.5, 0.5, 0.5)) as ds:
        ds.write(arr)
    return arr


def stray_files(store: Store, tmp_path: Path) -> list[str]:
    """Files the store's folder (or the process's staging area) holds beyond its objects."""
    if store.is_local:
        root = Path(store.url)
        files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        return sorted(set(files) - set(store.list()))
    return []


# ------------------------------------------------------------------------------- objects


def test_put_get_exists_list_delete_and_child(store: Store) -> None:
    for name, data in (("a.bin", b"A"), ("b/c.bin", b"C"), ("b/d.bin", b"D"), ("bx", b"X"),
                       (".chunks/000001.npz", b"1")):
        store.put_bytes(name, data)
    assert store.get_bytes("b/c.bin") == b"C" and store.exists("b/d.bin")
    assert not store.exists("b") and not store.exists("nope.bin")
    assert store.list() == [".chunks/000001.npz", "a.bin", "b/c.bin", "b/d.bin", "bx"]
    assert store.list("b/") == ["b/c.bin", "b/d.bin"] and store.list("b") == [
        "b/c.bin", "b/d.bin", "bx"]
    store.put_bytes("a.bin", b"A2")  # overwrite
    assert store.get_bytes("a.bin") == b"A2"

    sub = store.child("b")
    assert sub.url == store.url + "/b" and sub.list() == ["c.bin", "d.bin"]
    sub.child("e").put_bytes("f.bin", b"F")
    assert store.get_bytes("b/e/f.bin") == b"F"
    with pytest.raises(KeyError, match=f"{store.url}/b/nope.bin: no such object"):
        sub.get_bytes("nope.bin")

    # a sibling whose root the store's root prefixes is not part of the store
    sibling = open_store(store.url + "0")
    sibling.put_bytes("x", b"sibling")
    assert "x" not in store.list() and not any(n.startswith("0") for n in store.list())

    store.delete_prefix("b/")
    assert store.list() == [".chunks/000001.npz", "a.bin", "bx"]
    store.delete_prefix(".chunks")
    assert store.list() == ["a.bin", "bx"]
    store.delete_prefix("")
    assert store.list() == [] and not store.exists("a.bin")
    assert sibling.get_bytes("x") == b"sibling"
    if store.is_local:
        assert list(Path(store.url).iterdir()) == []


def test_names_must_be_relative_paths(store: Store) -> None:
    for bad in ("", "/abs.bin", "../up.bin", "a//b", "a/./b", "a\\b"):
        with pytest.raises(ConfigError, match="is not a relative path"):
            store.put_bytes(bad, b"x")
    with pytest.raises(ConfigError, match="is not a relative path"):
        store.child("")
    with pytest.raises(ConfigError, match="is not a relative path"):
        store.list("../")
    assert store.list() == []


def test_arrays_round_trip(store: Store) -> None:
    arrays = {
        "labels": np.arange(12, dtype=np.uint8).reshape(3, 4),
        "strip": np.linspace(-1, 1, 30, dtype=np.float32).reshape(3, 10),
        "origin": np.array([512, 1024], np.int64),
    }
    store.put_arrays("chunks/0001.npz", arrays)
    store.put_arrays("chunks/0002.npz", arrays, compress=True)
    for name in ("chunks/0001.npz", "chunks/0002.npz"):
        back = store.get_arrays(name)
        assert sorted(back) == sorted(arrays)
        for key, arr in arrays.items():
            assert back[key].dtype == arr.dtype and np.array_equal(back[key], arr)
    store.put_bytes("chunks/bad.npz", b"not a zip")
    with pytest.raises(ExportError, match="is not an .npz archive"):
        store.get_arrays("chunks/bad.npz")
    with pytest.raises(KeyError):
        store.get_arrays("chunks/0003.npz")


def test_puts_are_atomic_for_a_concurrent_reader(store: Store) -> None:
    size = 2_000_000
    payloads = [bytes([c]) * size for c in b"ab"]
    store.put_bytes("big.bin", payloads[0])
    seen: list[bytes] = []
    done = threading.Event()

    def write() -> None:
        try:
            for i in range(12):
                store.put_bytes("big.bin", payloads[i % 2])
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    while not done.is_set():
        data = store.get_bytes("big.bin")
        seen.append(data[:1])
        assert len(data) == size and data.count(data[:1]) == size  # one whole payload
    writer.join(timeout=60)
    assert len(seen) >= 2 and store.list() == ["big.bin"]


def test_a_failed_local_write_keeps_the_old_object_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(tmp_path / "out")
    store.put_bytes("a/x.bin", b"old")

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(objstore.os, "replace", fail)
    with pytest.raises(ExportError, match=r"cannot write '.*a/x.bin': No space left on device; "):
        store.put_bytes("a/x.bin", b"new")
    with pytest.raises(ExportError, match="No space left"):
        store.put_file(__file__, "a/x.bin")
    monkeypatch.undo()
    assert store.get_bytes("a/x.bin") == b"old"
    assert sorted(p.name for p in (tmp_path / "out" / "a").iterdir()) == ["x.bin"]


# ------------------------------------------------------------------------- staged files


def test_staged_file_publishes_on_success_and_leaves_nothing_on_failure(
    store: Store, tmp_path: Path
) -> None:
    with staged_file(store, "scene/classes.tif") as tmp:
        assert tmp.suffix == ".tif"
        arr = write_tif(tmp, (40, 30), 1)
        assert not store.exists("scene/classes.tif") and store.list() == []  # not yet
    assert store.exists("scene/classes.tif") and not tmp.exists()
    assert store.list() == ["scene/classes.tif"]

    store.put_bytes("scene/vectors.gpkg", b"old")
    with pytest.raises(RuntimeError, match="writer died"), \
            staged_file(store, "scene/vectors.gpkg") as tmp2:
        tmp2.write_bytes(b"half a geopackage")
        tmp2.with_name(tmp2.name + "-journal").write_bytes(b"j")  # SQLite's sidecar
        raise RuntimeError("writer died")
    assert store.get_bytes("scene/vectors.gpkg") == b"old"
    assert not tmp2.exists() and not tmp2.with_name(tmp2.name + "-journal").exists()
    if not store.is_local:
        assert not tmp2.parent.exists()  # the staging folder is gone
    with pytest.raises(ExportError, match="nothing was written"), \
            staged_file(store, "scene/empty.tif"):
        pass
    assert store.list() == ["scene/classes.tif", "scene/vectors.gpkg"]
    assert stray_files(store, tmp_path) == []

    # a suffix other than the name's: GDAL picks the driver from the temporary's name
    with staged_file(store, "scene/classes_copy", suffix=".tif") as tmp3:
        assert tmp3.suffix == ".tif"
        write_tif(tmp3, (40, 30), 1)
    with store.gdal_env("scene/classes_copy"), \
            rasterio.open(store.gdal_path("scene/classes_copy")) as ds:
        assert np.array_equal(ds.read(), arr)


def test_gdal_path_opens_with_rasterio_and_sees_rewrites(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src.tif"
    arr = write_tif(src, (50, 70), 2)
    store.put_file(src, "scene/img.tif")
    path = store.gdal_path("scene/img.tif")
    assert path.startswith("/vsis3/") != store.is_local
    with store.gdal_env("scene/img.tif"), rasterio.open(path) as ds:
        assert ds.crs == UTM and ds.shape == (50, 70)
        assert np.array_equal(ds.read(), arr)
    # rewritten in place: a reader in the same process must not get GDAL's cached copy
    with staged_file(store, "scene/img.tif") as tmp:
        arr2 = write_tif(tmp, (20, 90), 3)
    with store.gdal_env("scene/img.tif"), rasterio.open(path) as ds:
        assert ds.shape == (20, 90) and np.array_equal(ds.read(), arr2)
    store.get_file("scene/img.tif", tmp_path / "back.tif")
    with rasterio.open(tmp_path / "back.tif") as ds:
        assert np.array_equal(ds.read(), arr2)
    with pytest.raises(KeyError, match="no such object"):
        store.get_file("scene/none.tif", tmp_path / "none.tif")
    assert not (tmp_path / "none.tif").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_large_file_uploads_whole(store: Store, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    data = np.random.default_rng(0).integers(0, 255, 9 * 2**20, dtype=np.uint8).tobytes()
    big.write_bytes(data)  # above boto3's 8 MiB multipart threshold
    store.put_file(big, "cog/big.bin")
    store.get_file("cog/big.bin", tmp_path / "big_back.bin")
    assert (tmp_path / "big_back.bin").read_bytes() == data
    assert big.read_bytes() == data  # the source is copied, not moved


# ------------------------------------------------------------------------------ pickling


def test_a_pickled_store_works_in_another_process(store: Store) -> None:
    blob = pickle.dumps(store)
    assert len(blob) < 300 and SECRET.encode() not in blob  # the root only, no secret
    copy = pickle.loads(blob)
    assert copy == store and copy.url == store.url
    assert tokenize(copy) == tokenize(store) != tokenize(store.child("x"))  # stable task keys
    copy.put_bytes("from_copy.bin", b"1")
    assert store.get_bytes("from_copy.bin") == b"1"
    code = ("import pickle, sys; s = pickle.loads(sys.stdin.buffer.read()); "
            "s.child('w').put_bytes('from_worker.bin', b'2'); print(s.list())")
    proc = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True,
                          timeout=60, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr.decode()
    assert store.get_bytes("w/from_worker.bin") == b"2"
    assert "w/from_worker.bin" in proc.stdout.decode()


# ------------------------------------------------------------------- opening and checks


def test_open_store_parses_urls_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = open_store("s3://bucket/a/b/")
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix, s3.url) == ("bucket", "a/b",
                                                                           "s3://bucket/a/b")
    assert s3.gdal_path("c/d.tif") == "/vsis3/bucket/a/b/c/d.tif" and not s3.is_local
    assert open_store("/vsis3/bucket/a/b") == s3 and open_store(s3) is s3
    assert open_store("s3://bucket").url == "s3://bucket"
    assert open_store("s3://bucket").child("x").url == "s3://bucket/x"
    with pytest.raises(ConfigError, match="is not a local folder; use gdal_path"):
        s3.local_path("x")
    with pytest.raises(ConfigError, match="has no bucket"):
        open_store("s3:///prefix")
    with pytest.raises(ConfigError, match="unsupported scheme 'gs://'"):
        open_store("gs://bucket/x")
    monkeypatch.chdir(tmp_path)
    local = open_store("rel/out")
    assert isinstance(local, LocalStore) and local.is_local
    assert local.url == str(tmp_path / "rel" / "out")
    assert local.local_path("a/b.tif") == tmp_path / "rel" / "out" / "a" / "b.tif"
    assert open_store(f"file://{tmp_path}/x") == LocalStore(tmp_path / "x")
    assert repr(s3) == "S3Store('s3://bucket/a/b')"


def test_s3_client_uses_the_endpoint_gdal_reads_use() -> None:
    for env in ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"},
                {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000", "AWS_ENDPOINT_URL": "http://x:1"},
                {"AWS_S3_ENDPOINT": "127.0.0.1:9000", "AWS_HTTPS": "NO"}):
        gdal = gdal_options("s3://b/k.tif", env)
        client = s3_client_options(env)
        assert gdal.get("AWS_S3_ENDPOINT", env.get("AWS_S3_ENDPOINT")) == "127.0.0.1:9000"
        assert client["endpoint_url"] == "http://127.0.0.1:9000"
        assert client["addressing_style"] == "path"
    assert s3_client_options({})["endpoint_url"] is None
    assert s3_client_options({"AWS_ENDPOINT_URL": "minio.lan"})["endpoint_url"] == (
        "https://minio.lan")
    assert s3_client_options({"AWS_NO_SIGN_REQUEST": "YES",
                              "AWS_DEFAULT_REGION": "eu-west-1"})["unsigned"] is True


def one_line_config_error(store: Store, *needles: str) -> str:
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        check_store(store)
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert "\n" not in message and store.url in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def test_check_store_passes_and_leaves_no_probe(store: Store) -> None:
    check_store(store)
    assert store.list() == []


def test_s3_requests_on_a_missing_bucket_fail_in_one_line(s3_env: str) -> None:
    store = open_store("s3://no-such-bucket-y/run")
    for call in (lambda: store.put_bytes("a.bin", b"x"), lambda: store.get_bytes("a.bin"),
                 lambda: store.list()):
        with pytest.raises(ExportError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and "'s3://no-such-bucket-y/run" in message, message
        assert "bucket 'no-such-bucket-y' does not exist; create it" in message, message


def test_check_store_unwritable_folder(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")  # a folder below a file cannot be made, even by root
    one_line_config_error(open_store(tmp_path / "a_file" / "out"), "is not a writable folder",
                          "choose a writable folder")
    if os.geteuid() != 0:  # root writes through permissions
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        one_line_config_error(open_store(ro), "Permission denied")


def test_check_store_missing_bucket(s3_env: str) -> None:
    one_line_config_error(open_store("s3://no-such-bucket-x/run"),
                          "bucket 'no-such-bucket-x' does not exist",
                          "aws s3 mb s3://no-such-bucket-x")


def test_check_store_unreachable_endpoint(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    one_line_config_error(open_store("s3://bucket/run"), f"cannot reach the S3 endpoint {closed}",
                          "AWS_ENDPOINT_URL")


def test_check_store_no_credentials(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    one_line_config_error(open_store(f"s3://{'bucket'}/run"), "no usable AWS credentials",
                          "AWS_ACCESS_KEY_ID")


def test_check_store_without_boto3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3client, "_CLIENTS", {})
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 -> ImportError
    one_line_config_error(open_store("s3://bucket/run"), "pip install 'terraseg[s3]'")


def test_doctests() -> None:
    for module in (objstore, s3client):
        result = doctest.testmod(module)
        assert result.attempted >= 2 and result.failed == 0
