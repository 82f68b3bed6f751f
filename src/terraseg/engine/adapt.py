"""Adapt a scene to the model's card: GSD, bands and bit depth, before any pixel is predicted.

:func:`adapt_scene` returns the scene *as the model sees it*, an
:class:`AdaptedScene`, and the spec to run it with:

- **GSD.** When the scene's GSD (true metres, :attr:`Scene.gsd_m`) is outside the
  card's ``gsd_m`` ± ``gsd_tolerance``, the engine runs on a model-GSD grid over
  the scene's bounds (:class:`~terraseg.core.regrid.GridMap`): chunks, tiles and
  halos are planned on that grid and read resampled on the fly
  (:func:`~terraseg.io.warped.read_model_window`), and results go back to the
  scene's own grid by nearest neighbour (:class:`~terraseg.io.warped.RegriddedSink`).
  The model grid does not depend on the chunking, and neither do the results.
  ``resample=False`` refuses instead, with one line.
- **Bands.** A one-band scene (a panchromatic band, with or without alpha) is
  repeated to every input band of the model, with a :class:`BandWarning`; an
  alpha band is the validity mask (alpha 0 = nodata, no output there). Other
  mismatches raise :func:`~terraseg.models.card.adapt_bands`'s one-line error.
- **Bit depth.** A model whose normalisation expects 8-bit values (``scale: 255``,
  or ``meanstd`` with means in 0-255) given a scene whose values exceed 255
  (uint16, 11-bit pan) sees it stretched per band from its 2-98 % percentiles
  to 0-255 (values clipped to that range first). A card whose normalisation
  needs statistics (``percentile``, ``minmax``) gets them. Statistics come from
  one decimated read of the scene (:func:`~terraseg.io.bandstats.compute_band_stats`),
  fitted once per scene; the stretch is folded into the per-band ``(x - sub) / div``
  the engine applies on the device.

What was done is :attr:`AdaptedScene.record`, written to ``run.json`` as ``input``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from affine import Affine

from terraseg.core.grid import PixelWindow
from terraseg.core.regrid import GridMap
from terraseg.errors import BandError, ConfigError
from terraseg.io.bandstats import BandStats, compute_band_stats
from terraseg.io.boundless import PadMode, fill_window, plan_read
from terraseg.io.scene import Scene
from terraseg.io.warped import model_transform, read_model_window, warp_resampling
from terraseg.models.card import adapt_bands
from terraseg.models.spec import InputSpec, ModelSpec

__all__ = [
    "AdaptedScene",
    "BandWarning",
    "adapt_scene",
    "fit_scaling",
    "model_grid",
    "model_gsd",
    "needs_scaling",
    "sample_stats",
    "source_of",
]


class BandWarning(UserWarning):
    """The scene's bands were adapted to the model (a single band repeated)."""


@dataclass(frozen=True, eq=False, repr=False, kw_only=True)
class AdaptedScene(Scene):
    """A scene as a model sees it: on the model's grid, with its bands and value range.

    Its :attr:`shape`, :attr:`transform` and :attr:`gsd_xy_m` are those of the
    model grid (the scene's own when :attr:`gridmap` is ``None``); reads are
    resampled on the fly and clipped to the fitted range. Outputs belong on
    :attr:`source`'s grid (:func:`terraseg.engine.outputs.open_sinks` maps them
    back). Pickles cheaply (paths and numbers), like a :class:`Scene`.

    Attributes
    ----------
    source
        The scene on its own grid.
    gridmap
        The model grid, or ``None`` when the scene is read on its own grid.
    input
        What the engine feeds the model: bands and the fitted ``(x - mean) / std``.
    clip
        Per scene band, the ``(low, high)`` range raw values are clipped to
        before normalising, or ``None``.
    record
        What was adapted and why (JSON-ready), for ``run.json``.
    """

    source: Scene
    gridmap: GridMap | None
    input: InputSpec
    clip: tuple[tuple[float, float] | None, ...] | None = None
    record: Mapping[str, Any] = field(default_factory=dict)

    @property
    def resampled(self) -> bool:
        """Whether the model runs on a grid other than the scene's."""
        return self.gridmap is not None

    def __repr__(self) -> str:
        grid = f"{self.shape[0]}x{self.shape[1]} px model grid" if self.resampled else "own grid"
        return f"AdaptedScene({self.source!r}, {grid}, bands {list(self.input.bands)})"

    def __dask_tokenize__(self) -> tuple[object, ...]:
        return (
            "terraseg.AdaptedScene",
            self.source.__dask_tokenize__(),
            self.gridmap,
            self.input.model_dump_json(),
            self.clip,
        )

    def _read(
        self,
        window: PixelWindow,
        bands: Sequence[int] | None,
        pad: PadMode,
        *,
        with_mask: bool,
    ) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_] | None, Affine]:
        if self.gridmap is None:
            data, valid, transform = self.source._read(window, bands, pad, with_mask=with_mask)
        else:
            plan = plan_read(window, self.shape, pad)
            selected = self.check_bands(bands)
            unique = list(dict.fromkeys(selected))
            if plan.source is not None:
                block, valid = read_model_window(
                    self.source, self.gridmap, plan.source, unique, with_mask=with_mask
                )
            else:
                block = np.empty((len(unique), 0, 0), dtype=self.dtype)
                valid = np.empty((0, 0), dtype=bool) if with_mask else None
            take = [unique.index(b) for b in selected]
            fill = 0 if self.nodata is None else self.nodata
            data, valid = fill_window(plan, block[take], valid, fill=fill)
            transform = self.transform * Affine.translation(window.col_off, window.row_off)
        if self.clip is not None:
            for k, band in enumerate(self.check_bands(bands)):
                rng = self.clip[band - 1]
                if rng is not None:  # integer ranges for integer data (see _fit_scaling)
                    lo, hi = np.asarray(rng).astype(data.dtype)
                    np.clip(data[k], lo, hi, out=data[k])
        return data, valid, transform


# --------------------------------------------------------------------------- model GSD


def model_gsd(semantic: str | None, instance: str | None = None) -> tuple[float, float, str] | None:
    """``(gsd_m, tolerance, model name)`` from the cards of a run's models, or ``None``.

    The instance model's card first, then the semantic one's; a built-in model,
    or a card without ``gsd_m``, states none. Reads cards only (no weights)
    where the card is a file; a checkpoint whose card lives in its
    hyper-parameters is loaded.
    """
    for ref in (instance, semantic):
        if not ref:
            continue
        card = _card_of(ref)
        gsd = getattr(card, "gsd_m", None)
        if gsd is not None:
            return float(gsd), float(getattr(card, "gsd_tolerance", 0.25)), str(card.name)
    return None


def _card_of(ref: str) -> ModelSpec:
    """The card (or spec) of a model reference, without loading weights where possible."""
    import importlib.resources
    from pathlib import Path

    from terraseg.models.builtin import BUILTIN_MODELS, build_builtin
    from terraseg.models.card import CARD_SUFFIX, card_path_for, load_card
    from terraseg.models.loading import bundled_names, load_model

    is_name = "/" not in ref and os.sep not in ref
    if is_name and ref in BUILTIN_MODELS:
        return build_builtin(ref)[1]
    if is_name and ref in bundled_names() and not Path(ref).exists():
        res = importlib.resources.files("terraseg.models").joinpath("bundled", ref + CARD_SUFFIX)
        with importlib.resources.as_file(res) as card_path:
            return load_card(card_path)
    path = Path(ref)
    if path.name.endswith(CARD_SUFFIX):
        return load_card(path)
    beside = card_path_for(path)
    if beside.exists():
        return load_card(beside)
    return load_model(ref)[1]


# --------------------------------------------------------------------------- adapt


def _data_bands(scene: Scene) -> list[int]:
    """The scene's bands that carry data (all but an alpha band)."""
    return [b for b in range(1, scene.count + 1) if b != scene.alpha_band]


def _adapt_bands(scene: Scene, spec: ModelSpec) -> tuple[tuple[int, ...], dict[str, Any]]:
    """The scene bands to feed the model, and their record (warns when one band is repeated)."""
    need = spec.input.n_bands
    data = _data_bands(scene)
    wanted = spec.input.bands
    record: dict[str, Any] = {
        "scene_bands": scene.count,
        "alpha_band": scene.alpha_band,
        "mask": "alpha" if scene.has_alpha else ("nodata" if scene.nodata is not None else None),
    }
    if max(wanted) <= scene.count and scene.alpha_band not in wanted:
        return tuple(wanted), record | {"model_bands": list(wanted), "repeated": False}
    if len(data) == 1 and need > 1:
        bands = (data[0],) * need
        warnings.warn(
            f"scene '{scene.path}' has one band; it is repeated to the {need} input bands of "
            f"model '{spec.name}' (bands {list(bands)})",
            BandWarning,
            stacklevel=3,
        )
        return bands, record | {"model_bands": list(bands), "repeated": True}
    if max(wanted) <= len(data):  # the model's bands exist once the alpha band is left out
        chosen = adapt_bands(spec, len(data), scene=f"scene '{scene.path}'").bands
    else:
        raise BandError(
            f"model '{spec.name}' reads bands {list(wanted)} but scene '{scene.path}' has "
            f"{scene.count} band(s)"
            + (f" (band {scene.alpha_band} is its alpha mask)" if scene.has_alpha else "")
            + f"; choose a scene with {need}+ bands or set the model's input bands (a "
            f"one-band scene is repeated to all {need})",
            path=scene.path,
            bands=wanted,
            count=scene.count,
        )
    if scene.alpha_band in chosen:
        raise BandError(
            f"model '{spec.name}' reads bands {list(chosen)} but band {scene.alpha_band} of "
            f"scene '{scene.path}' is its alpha (mask) band; give the model a scene with "
            f"{need} data bands",
            path=scene.path,
        )
    return chosen, record | {"model_bands": list(chosen), "repeated": False}


def model_grid(
    scene: Scene, gsd: tuple[float, float, str] | None, *, resample: bool
) -> tuple[GridMap | None, dict[str, Any]]:
    """The model grid when the scene's GSD is outside the card's tolerance (or refuse)."""
    record: dict[str, Any] = {
        "scene_gsd_m": round(scene.gsd_m, 6),
        "model_gsd_m": None,
        "resampled": False,
        "factor": None,
    }
    if gsd is None:
        return None, record
    model_m, tol, name = gsd
    record.update(model_gsd_m=model_m, tolerance=tol)
    if not (math.isfinite(scene.gsd_m) and scene.gsd_m > 0):
        raise ConfigError(
            f"scene '{scene.path}' has no usable GSD ({scene.gsd_m}); check its transform"
        )
    if abs(scene.gsd_m / model_m - 1.0) <= tol + 1e-9:
        return None, record
    if not resample:
        raise ConfigError(
            f"scene '{scene.path}' has a GSD of {scene.gsd_m:.3g} m but model '{name}' was "
            f"trained at {model_m:g} m (±{tol:.0%}); drop --no-resample (resample=False) to "
            f"resample it to {model_m:g} m on the fly, or resample the file first "
            f"(gdalwarp -tr {model_m:g} {model_m:g} -r average)",
            gsd_m=scene.gsd_m,
            model_gsd_m=model_m,
        )
    gx, gy = scene.gsd_xy_m
    gridmap = GridMap(scene.shape, model_m / gy, model_m / gx)
    record.update(
        resampled=True,
        factor=[round(gridmap.fy, 6), round(gridmap.fx, 6)],
        model_grid_shape=list(gridmap.model_shape),
        resampling=warp_resampling(gridmap),
    )
    return gridmap, record


def _expects_8bit(inp: InputSpec) -> bool:
    """Whether a normalisation was made for 0-255 values (``scale: 255``, 0-255 means)."""
    if inp.normalization == "scale":
        return inp.scale == 255.0  # scale 1 (raw values) or 2047/65535 state their own range
    if inp.normalization == "meanstd" and inp.mean is not None:
        return max(inp.mean) <= 255.0
    return False


def _fit_scaling(
    scene: Scene, inp: InputSpec
) -> tuple[InputSpec, tuple[tuple[float, float] | None, ...] | None, dict[str, Any]]:
    """The input spec with a fitted normalisation, the per-band clip range, and their record."""
    if not needs_scaling(inp, str(scene.dtype)):
        return fit_scaling(inp, None, str(scene.dtype), scene.count)
    return fit_scaling(
        inp, compute_band_stats(scene, sorted(set(inp.bands))), str(scene.dtype), scene.count
    )


def needs_scaling(inp: InputSpec, dtype: str) -> bool:
    """Whether ``inp`` needs band statistics of a ``dtype`` scene (see :func:`fit_scaling`)."""
    if inp.normalization in ("percentile", "minmax"):
        return True
    return _expects_8bit(inp) and dtype not in ("uint8", "int8")


def sample_stats(
    data: npt.NDArray[Any], valid: npt.NDArray[np.bool_], bands: Sequence[int], decimation: int
) -> BandStats:
    """:class:`~terraseg.io.bandstats.BandStats` of a decimated sample ``(band, y, x)``.

    ``bands`` names the sample's bands (1-based); only ``valid`` pixels count.
    """
    rows = [data[i][valid].astype(np.float64) for i in range(len(bands))]
    if not valid.any():
        raise BandError("the input holds no valid pixels (all nodata); nothing to predict")
    return BandStats(
        bands=tuple(bands),
        mean=tuple(float(v.mean()) for v in rows),
        std=tuple(float(v.std()) for v in rows),
        min=tuple(float(v.min()) for v in rows),
        max=tuple(float(v.max()) for v in rows),
        p2=tuple(float(np.percentile(v, 2.0)) for v in rows),
        p98=tuple(float(np.percentile(v, 98.0)) for v in rows),
        count=int(valid.sum()),
        decimation=decimation,
    )


def fit_scaling(
    inp: InputSpec, stats: BandStats | None, dtype: str, n_bands: int
) -> tuple[InputSpec, tuple[tuple[float, float] | None, ...] | None, dict[str, Any]]:
    """The input spec with a fitted normalisation, the per-band clip range, and their record.

    ``stats`` covers ``inp``'s bands (``None`` when :func:`needs_scaling` is false);
    ``n_bands`` is the scene's band count (the clip tuple has one entry per band).
    """
    if stats is None:
        return inp, None, {"dtype": dtype, "method": "card", "normalization": inp.normalization}
    needs_stats = inp.normalization in ("percentile", "minmax")
    per = {b: i for i, b in enumerate(stats.bands)}
    record: dict[str, Any] = {
        "dtype": dtype,
        "sample_px": stats.count,
        "sample_decimation": stats.decimation,
    }
    if not needs_stats and max(stats.max) <= 255.0:
        return (
            inp,
            None,
            record
            | {
                "method": "card",
                "normalization": inp.normalization,
                "note": "values already within 0-255",
            },
        )
    if inp.normalization == "minmax":
        lo = [stats.min[per[b]] for b in inp.bands]
        hi = [stats.max[per[b]] for b in inp.bands]
        sub, div, method = lo, [max(h - lo_, 1e-6) for lo_, h in zip(lo, hi, strict=True)], "minmax"
    else:
        lo = [stats.p2[per[b]] for b in inp.bands]
        hi = [max(stats.p98[per[b]], lo_ + 1.0) for b, lo_ in zip(inp.bands, lo, strict=True)]
        if np.issubdtype(np.dtype(dtype), np.integer):  # the clip range holds in the dtype
            lo, hi = [math.floor(v) for v in lo], [math.ceil(v) for v in hi]
        spread = [h - lo_ for lo_, h in zip(lo, hi, strict=True)]
        if inp.normalization == "percentile":
            sub, div, method = lo, spread, "percentile"
        else:  # stretch p2..p98 to 0..255, then the card's own 8-bit normalisation
            sub0, div0 = inp.affine()
            sub = [lo_ + float(s0) * s / 255.0 for lo_, s0, s in zip(lo, sub0, spread, strict=True)]
            div = [float(d0) * s / 255.0 for d0, s in zip(div0, spread, strict=True)]
            method = "percentile-to-8bit"
    clip: list[tuple[float, float] | None] = [None] * n_bands
    if method != "minmax":
        for b, lo_, h in zip(inp.bands, lo, hi, strict=True):
            clip[b - 1] = (float(lo_), float(h))
    fitted = inp.model_copy(
        update={"normalization": "meanstd", "mean": tuple(sub), "std": tuple(div)}
    )
    record |= {
        "method": method,
        "card_normalization": inp.normalization,
        "percentiles": [2.0, 98.0] if method != "minmax" else None,
        "low": [round(v, 4) for v in lo],
        "high": [round(v, 4) for v in hi],
    }
    return fitted, tuple(clip), record


def adapt_scene(
    scene: Scene,
    spec: ModelSpec,
    *,
    gsd: tuple[float, float, str] | None,
    resample: bool = True,
) -> tuple[AdaptedScene, ModelSpec]:
    """The scene as ``spec``'s model sees it, and the spec to run it with.

    Parameters
    ----------
    scene
        The scene on its own grid.
    spec
        The model's spec (from its card).
    gsd
        ``(gsd_m, tolerance, model name)`` from :func:`model_gsd`; ``None``: the
        model states no GSD and the scene is never resampled.
    resample
        Resample a scene whose GSD is outside the tolerance (default); ``False``
        refuses it with :class:`~terraseg.errors.ConfigError`.

    Returns
    -------
    (AdaptedScene, ModelSpec)
        The view to plan and read chunks on, and ``spec`` with the adapted
        input (bands, fitted normalisation). Outputs go on ``scene``'s grid.

    Raises
    ------
    ConfigError
        GSD outside the tolerance with ``resample=False``, or no usable GSD.
    BandError
        The scene's bands cannot feed the model.

    Warns
    -----
    BandWarning
        A single band is repeated to the model's input bands.
    """
    if isinstance(scene, AdaptedScene):
        scene = scene.source
    bands, band_record = _adapt_bands(scene, spec)
    gridmap, gsd_record = model_grid(scene, gsd, resample=resample)
    inp, clip, scale_record = _fit_scaling(scene, spec.input.model_copy(update={"bands": bands}))
    record = {"bands": band_record, "gsd": gsd_record, "scaling": scale_record}
    if gridmap is None:
        geo = (
            scene.transform,
            scene.shape,
            scene.block_shape,
            scene.overview_factors,
            scene.gsd_xy_m,
        )
    else:
        gx, gy = scene.gsd_xy_m
        geo = (
            model_transform(scene.transform, gridmap),
            gridmap.model_shape,
            (256, 256),
            (),
            (gx * gridmap.fx, gy * gridmap.fy),
        )
    transform, shape, block_shape, overviews, gsd_xy = geo
    view = AdaptedScene(
        source=scene,
        gridmap=gridmap,
        input=inp,
        clip=clip,
        record=record,
        path=scene.path,
        crs=scene.crs,
        count=scene.count,
        dtypes=scene.dtypes,
        nodata=scene.nodata,
        colorinterp=scene.colorinterp,
        band_descriptions=scene.band_descriptions,
        crs_assumed=scene.crs_assumed,
        mtime_ns=scene.mtime_ns,
        transform=transform,
        shape=shape,
        block_shape=block_shape,
        overview_factors=overviews,
        gsd_xy_m=gsd_xy,
    )
    return view, spec.model_copy(update={"input": inp})


def source_of(scene: Scene) -> Scene:
    """The scene on its own grid (``scene`` itself unless it is an :class:`AdaptedScene`)."""
    return scene.source if isinstance(scene, AdaptedScene) else scene
