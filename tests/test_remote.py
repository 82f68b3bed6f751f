"""Scenes read over the network: http(s):// with range requests, s3:// on a loopback moto server.

Every server listens on 127.0.0.1 and is stopped when its test ends. The HTTP
server counts the bytes it sends, so a window read is shown to fetch only the
blocks it needs.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from remote_helpers import RangeServer, moto_s3

from terraseg.api import predict_to_dir
from terraseg.core.grid import PixelWindow
from terraseg.errors import SceneReadError
from terraseg.io.handles import clear_handle_cache
from terraseg.io.raster_sink import RasterSink
from terraseg.io.remote import (
    RemoteLayoutWarning,
    gdal_options,
    source_stem,
    to_gdal_path,
)
from terraseg.io.scene import open_scene

TERRASEG = str(Path(sys.executable).with_name("terraseg"))
UTM = CRS.from_epsg(32633)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TERRASEG, *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "200", **(env or {})}, stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("terraseg: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def write_blocky_scene(path: Path) -> Path:
    """A 300x260 RGB scene of flat colour blocks (cheap model: buildings, a road, grass)."""
    arr = np.empty((3, 300, 260), np.uint8)
    arr[:] = np.array([40, 150, 40], np.uint8)[:, None, None]  # grass
    arr[:, 140:160, :] = 150  # a grey road across the scene
    for r, c in ((20, 20), (20, 140), (200, 60), (220, 180)):
        arr[:, r : r + 40, c : c + 50] = np.array([210, 70, 60], np.uint8)[:, None, None]
    with rasterio.open(
        path, "w", driver="GTiff", height=300, width=260, count=3, dtype="uint8", crs=UTM,
        transform=from_origin(433_000.5, 4_650_000.5, 0.5, 0.5), tiled=True,
        blockxsize=128, blockysize=128,
    ) as ds:
        ds.write(arr)
    return path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[RangeServer]:
    """A loopback HTTP server over a folder holding ``scene.tif``."""
    web = tmp_path / "web"
    web.mkdir()
    write_blocky_scene(web / "scene.tif")
    with RangeServer(web) as server:
        yield server


@pytest.fixture
def local_classes(tmp_path: Path) -> bytes:
    """``classes.tif`` of the local scene, predicted in-process (the reference)."""
    scene = write_blocky_scene(tmp_path / "local_scene.tif")
    res = predict_to_dir(scene, tmp_path / "local", model="cheap", device="cpu",
                         show_progress=False)
    return res.classes_path.read_bytes()


# ------------------------------------------------------------------------ paths and options


def test_urls_map_to_gdal_network_paths_and_output_stems() -> None:
    assert to_gdal_path("http://127.0.0.1:8000/a/scene.tif") == (
        "/vsicurl/http://127.0.0.1:8000/a/scene.tif")
    assert to_gdal_path("s3://bucket/dir/scene.tif") == "/vsis3/bucket/dir/scene.tif"
    assert to_gdal_path("/vsis3/bucket/scene.tif") == "/vsis3/bucket/scene.tif"
    assert to_gdal_path("relative/scene.tif") == "relative/scene.tif"
    assert source_stem("https://h/x/scene.tif?X-Amz-Signature=abc&x=1") == "scene"
    assert source_stem("s3://bucket/2024/tile_03.tiff") == "tile_03"
    assert source_stem("/vsicurl/https://h/x/city.tif") == "city"


def test_gdal_options_map_aws_cli_endpoint_and_leave_user_settings_alone() -> None:
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "eu-west-1"}
    opts = gdal_options("s3://bucket/scene.tif", env)
    assert opts["AWS_S3_ENDPOINT"] == "127.0.0.1:9000"
    assert opts["AWS_HTTPS"] == "NO" and opts["AWS_VIRTUAL_HOSTING"] == "FALSE"
    assert opts["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    # the S3-specific variable wins over the generic one; a user's own GDAL settings win
    env = {"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "https://minio.lan",
           "AWS_VIRTUAL_HOSTING": "TRUE", "GDAL_HTTP_MAX_RETRY": "9"}
    opts = gdal_options("s3://bucket/scene.tif", env)
    assert opts["AWS_S3_ENDPOINT"] == "minio.lan" and opts["AWS_HTTPS"] == "YES"
    assert "AWS_VIRTUAL_HOSTING" not in opts and "GDAL_HTTP_MAX_RETRY" not in opts
    # GDAL's own endpoint variable is left to GDAL; http URLs get no AWS settings
    assert "AWS_S3_ENDPOINT" not in gdal_options("s3://b/k.tif", {"AWS_S3_ENDPOINT": "h:1"})
    assert "AWS_S3_ENDPOINT" not in gdal_options("https://h/k.tif", env)
    assert gdal_options("/data/scene.tif", env) == {}


# ------------------------------------------------------------------------------- HTTP


def test_cli_predict_over_http_gives_the_local_classes_byte_for_byte(
    served: RangeServer, local_classes: bytes, tmp_path: Path
) -> None:
    url = served.url("scene.tif")
    proc = run_cli("predict", url, "--out", str(tmp_path / "remote"), "--model", "cheap",
                   "--device", "cpu", "--no-vectorize")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "remote" / "classes.tif").read_bytes() == local_classes
    run = json.loads((tmp_path / "remote" / "run.json").read_text())
    assert run["scene"] == url and run["config"]["scene"] == url
    gets = [r for r in served.requests if r[0] == "GET"]
    assert gets and all(rng is not None for _, _, rng in gets), served.requests  # ranged only
    # no probing for sidecars (.ovr, .aux.xml, .msk) or directory listings
    assert {path for _, path, _ in served.requests} == {"/scene.tif"}


@pytest.fixture(scope="module")
def big_cog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8192x8192 one-band COG (512-px tiles, overviews) of cheap, compressible noise."""
    web = tmp_path_factory.mktemp("bigweb")
    path = web / "big.tif"
    rng = np.random.default_rng(0)
    block = (rng.integers(0, 4, (1, 512, 512), dtype=np.uint8) * 40 + 20)
    like = {"crs": UTM, "transform": from_origin(400_000, 5_000_000, 0.5, 0.5),
            "shape": (8192, 8192)}
    with RasterSink(path, like=like, nodata=None, compress="deflate", level=1) as sink:
        for r in range(0, 8192, 512):
            for c in range(0, 8192, 512):
                sink.write(PixelWindow(r, c, 512, 512), block)
    return path


def test_window_of_a_remote_8192_cog_fetches_under_5_percent(big_cog: Path) -> None:
    size = big_cog.stat().st_size
    window = PixelWindow(3000, 5000, 512, 512)  # not block aligned: touches 4 tiles
    with RangeServer(big_cog.parent) as server:
        scene = open_scene(server.url(big_cog.name))
        data, _ = scene.read_window(window)
        fetched = server.bytes_sent[f"/{big_cog.name}"]
        clear_handle_cache()
    expected, _ = open_scene(big_cog).read_window(window)
    np.testing.assert_array_equal(data, expected)
    fraction = fetched / size
    print(f"512^2 window of an 8192^2 COG ({size / 2**20:.1f} MiB): fetched {fetched} bytes, "
          f"{100 * fraction:.2f} % of the file")
    assert scene.shape == (8192, 8192) and scene.mtime_ns is None
    assert 0 < fraction < 0.05, (fetched, size)


def test_remote_scene_pickles_and_reopens_in_another_thread(served: RangeServer) -> None:
    scene = open_scene(served.url("scene.tif"))
    window = PixelWindow(-16, 100, 64, 64)  # hangs over the top edge: reflect padding
    expected = scene.read_window_with_mask(window)
    clone = pickle.loads(pickle.dumps(scene))
    assert clone.path == scene.path and "http" in repr(clone)
    got: list[tuple[np.ndarray, np.ndarray]] = []

    def read() -> None:  # a fresh thread: its own handle and its own GDAL settings
        data, valid, _ = clone.read_window_with_mask(window)
        got.append((data, valid))
        clear_handle_cache()

    worker = threading.Thread(target=read)
    worker.start()
    worker.join(timeout=60)
    clear_handle_cache()
    assert got, "the reading thread did not finish"
    np.testing.assert_array_equal(got[0][0], expected[0])
    np.testing.assert_array_equal(got[0][1], expected[1])


def test_dask_worker_process_opens_a_remote_scene(served: RangeServer) -> None:
    distributed = pytest.importorskip("distributed")
    scene = open_scene(served.url("scene.tif"))
    window = PixelWindow(10, 20, 50, 60)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        remote = client.submit(lambda sc: sc.read_window(window)[0], scene).result(timeout=60)
    np.testing.assert_array_equal(remote, scene.read_window(window)[0])
    clear_handle_cache()


def test_cli_predict_404_is_one_line_exit_2(served: RangeServer, tmp_path: Path) -> None:
    url = served.url("missing.tif")
    proc = run_cli("predict", url, "--out", str(tmp_path / "o"), "--model", "cheap")
    assert_one_line_error(proc, url, "404", "check the URL")
    assert not (tmp_path / "o").exists()


def test_403_and_a_server_without_ranges_fail_in_one_line(tmp_path: Path) -> None:
    web = tmp_path / "web"
    web.mkdir()
    write_blocky_scene(web / "scene.tif")
    with RangeServer(web) as server:
        with pytest.raises(SceneReadError, match=r"403 \(access denied\).*signature"):
            open_scene(server.url("forbidden/scene.tif"))
    with RangeServer(web, ranges=False) as server:
        with pytest.raises(SceneReadError, match="does not support HTTP range requests") as err:
            open_scene(server.url("scene.tif") + "?no-ranges")
    assert "\n" not in str(err.value) and "download it first" in str(err.value)


def test_striped_remote_scene_warns_with_the_download_cost(tmp_path: Path) -> None:
    web = tmp_path / "web"
    web.mkdir()
    with rasterio.open(web / "strips.tif", "w", driver="GTiff", height=64, width=4100, count=1,
                       dtype="uint8", crs=UTM, transform=from_origin(400_000, 5_000_000, 1, 1),
                       blockysize=16) as ds:  # untiled: 16-row strips across the full width
        ds.write(np.full((1, 64, 4100), 7, np.uint8))
    with rasterio.open(web / "strips.tif") as src:
        profile = src.profile | {"tiled": True, "blockxsize": 256, "blockysize": 256}
        with rasterio.open(web / "tiled.tif", "w", **profile) as dst:
            dst.write(src.read())
    with RangeServer(web) as server:
        with pytest.warns(RemoteLayoutWarning, match=r"not cloud-optimized.*about 3x.*gdal_"):
            open_scene(server.url("strips.tif"))
        with warnings.catch_warnings():
            warnings.simplefilter("error", RemoteLayoutWarning)  # a tiled one: no warning
            open_scene(server.url("tiled.tif"))
    clear_handle_cache()


# --------------------------------------------------------------------------------- S3


def test_cli_predict_from_s3_on_moto_gives_the_local_classes(
    local_classes: bytes, tmp_path: Path
) -> None:
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("moto")
    scene = write_blocky_scene(tmp_path / "upload.tif")
    with moto_s3() as endpoint:
        creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_REGION": "us-east-1"}
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
        s3.create_bucket(Bucket="bucket")
        s3.upload_file(str(scene), "bucket", "scenes/scene.tif")
        # the way AWS CLI users point at an S3-compatible server: AWS_ENDPOINT_URL
        env = {**creds, "AWS_ENDPOINT_URL": endpoint}
        proc = run_cli("predict", "s3://bucket/scenes/scene.tif", "--out",
                       str(tmp_path / "s3"), "--model", "cheap", "--device", "cpu",
                       "--no-vectorize", env=env)
        missing = run_cli("predict", "s3://bucket/scenes/nope.tif", "--out",
                          str(tmp_path / "n"), "--model", "cheap", env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "s3" / "classes.tif").read_bytes() == local_classes
    run = json.loads((tmp_path / "s3" / "run.json").read_text())
    assert run["scene"] == "s3://bucket/scenes/scene.tif"
    assert_one_line_error(missing, "s3://bucket/scenes/nope.tif", "404", "bucket and key")
