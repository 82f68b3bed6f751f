"""terraseg: huge GeoTIFFs to georeferenced building and road polygons, out of core, on Dask.

The notebook API::

    import terraseg
    scene = terraseg.open_scene("city.tif")          # lazy; scene.to_xarray() for a dask view
    classes = terraseg.predict(scene, window=(0, 0, 1024, 1024))   # DataArray with CRS
    layers = terraseg.vectorize(classes)             # GeoDataFrames in the scene CRS
    ids, segs = terraseg.segment(scene, method="slic")   # no model: superpixels, k-means...
    obj = terraseg.extract(scene, point=(x, y))      # the building (or region) at a point
    res = terraseg.predict_to_dir("city.tif", "out", vectorize=True)   # `terraseg predict`
    summary = terraseg.run("workflows/demo.yaml")    # a batch run on Dask
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from terraseg._version import __version__

if TYPE_CHECKING:  # the real signatures, for type checkers and IDEs
    from terraseg.api import extract, predict, predict_to_dir, run, segment, vectorize
    from terraseg.config import load_workflow
    from terraseg.io.scene import open_scene

__all__ = [
    "__version__", "extract", "load_workflow", "open_scene", "predict", "predict_to_dir", "run",
    "segment", "vectorize",
]


def __getattr__(name: str) -> Any:
    # lazy: `import terraseg` stays cheap (no torch) until a function is used
    if name == "open_scene":
        from terraseg.io.scene import open_scene

        return open_scene
    if name in ("predict", "predict_to_dir", "vectorize", "run", "segment", "extract"):
        from terraseg import api

        return getattr(api, name)
    if name == "load_workflow":
        from terraseg.config import load_workflow

        return load_workflow
    raise AttributeError(f"module 'terraseg' has no attribute {name!r}")
