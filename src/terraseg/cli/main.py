"""Command-line interface (typer). Thin: parse options, call one library function.

Any :class:`~terraseg.errors.TerrasegError` is printed as one line,
``terraseg: error: <message>``, on stderr, with exit status 2; any other
exception as one line too (``terraseg: error: internal error: ...``), with exit
status 1. A training run paused at ``--max-minutes``
(:class:`~terraseg.errors.TrainingPaused`) prints its resume line and exits
with status 75 (``EX_TEMPFAIL``). Warnings and log records become one line each
(:mod:`terraseg.cli.output`). ``--debug`` shows tracebacks and warnings with
their file and line instead; ``-q``/``-v`` set the verbosity. Help texts are
rich markup: write a literal ``[`` as ``\\[`` (``terraseg\\[onnx]``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from terraseg._version import __version__
from terraseg.cli.output import OutputSettings, install_output
from terraseg.errors import TerrasegError, TrainingPaused
from terraseg.progress import progress_bars

app = typer.Typer(
    name="terraseg",
    help="Segment huge GeoTIFFs into georeferenced building and road polygons.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False, "progress": True}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"terraseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[
        bool,
        typer.Option("--debug", help="Show tracebacks on errors, and warnings with their source."),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("-q", "--quiet", help="Print only results and errors: no progress, no warnings.")
    ] = False,
    verbose: Annotated[
        int, typer.Option("-v", "--verbose", count=True, help="More messages (-v info, -vv debug).")
    ] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    _state["debug"] = debug
    if quiet and verbose:
        from terraseg.errors import ConfigError

        raise ConfigError("-q/--quiet and -v/--verbose contradict each other; pass one of them")
    settings = OutputSettings(verbosity=-1 if quiet else min(verbose, 2), debug=debug)
    _state["progress"] = settings.progress
    ctx.call_on_close(install_output(settings))


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Output GeoTIFF path (truth files go beside it).")],
    size_px: Annotated[
        int, typer.Option("--size-px", help="Scene width and height in pixels.")
    ] = 4096,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same city.")] = 0,
    gsd_m: Annotated[
        float, typer.Option("--gsd-m", help="Ground sample distance, metres/pixel.")
    ] = 0.5,
    crs: Annotated[
        str, typer.Option(help="Projected CRS of the scene (e.g. EPSG:32633).")
    ] = "EPSG:32633",
    bands: Annotated[int, typer.Option(help="3 (RGB) or 4 (RGB + NIR).")] = 3,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
) -> None:
    """Generate a synthetic georeferenced city scene with building and road truth."""
    from terraseg.progress import progress_callback
    from terraseg.synthetic import make_city

    with progress_callback("synth", unit="window", enabled=bool(_state["progress"])) as cb:
        city = make_city(
            out,
            size_px=size_px,
            seed=seed,
            gsd_m=gsd_m,
            crs=crs,
            bands=bands,
            overwrite=overwrite,
            progress=cb,
        )
    typer.echo(city.describe())


@app.command()
def predict(
    scene: Annotated[str, typer.Argument(
        help="Input GeoTIFF/COG: a path, an http(s):// or s3:// URL, or a STAC item JSON.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    model: Annotated[
        str,
        typer.Option(help="Bundled or built-in model name (`terraseg models`), or a checkpoint path."),
    ] = "demo-instance",
    tile_px: Annotated[int, typer.Option("--tile-px", help="Model tile size, pixels.")] = 512,
    overlap_px: Annotated[int, typer.Option("--overlap-px", help="Tile overlap, pixels.")] = 64,
    chunk_px: Annotated[
        int, typer.Option("--chunk-px", help="Chunk size (Dask task), pixels.")
    ] = 2048,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Tiles per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    amp: Annotated[
        str, typer.Option(help="Mixed precision: auto (on CUDA), bf16, fp16, off; bf16 also on a CPU with native bfloat16 (AVX512-BF16/AMX, about 2x faster).")
    ] = "auto",
    ramp: Annotated[str, typer.Option(help="Blending window: cosine, linear or none.")] = "cosine",
    backend: Annotated[
        str, typer.Option(help="Model execution: torch, or onnxruntime (CPU; pip install 'terraseg\\[onnx]').")
    ] = "torch",
    probabilities: Annotated[
        bool,
        typer.Option("--probabilities/--no-probabilities", help="Also write probabilities.tif (each building's score is its mean building probability)."),
    ] = True,
    assume_crs: Annotated[
        str | None, typer.Option("--assume-crs", help="CRS for a scene that has none.")
    ] = None,
    vectorize: Annotated[
        bool, typer.Option("--vectorize/--no-vectorize", help="Also write instances.tif and <scene>.gpkg (+ .qgz).")
    ] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted or failed run from OUT/.chunks: only the chunks not stored yet are computed (refused, naming the change, if the model, tiling or scene changed).")
    ] = False,
    asset: Annotated[
        str, typer.Option("--asset", help="STAC item: the asset key or role to read.")
    ] = "visual",
    resample: Annotated[
        bool, typer.Option("--resample/--no-resample", help="Read a scene whose GSD is outside the model card's tolerance at the model's GSD (outputs stay on the scene's grid); --no-resample refuses it instead.")
    ] = True,
    tta: Annotated[
        str, typer.Option("--tta", help="Test-time augmentation: none, or d4 (average the eight flips and rotations of each tile; 8x the model's work).")
    ] = "none",
    min_score: Annotated[
        float | None, typer.Option("--min-score", help="Leave out buildings whose score (mean building probability) is below this; default: the model card's building_min_score (`terraseg models`), 0 keeps all. Needs --probabilities.")
    ] = None,
    min_area_m2: Annotated[
        float | None, typer.Option("--min-area-m2", help="Leave out buildings smaller than this (true m²); default: the model card's building_min_area_m2, else 4.")
    ] = None,
    seed_p: Annotated[
        float | None, typer.Option("--seed-p", help="Boundary models: the building-interior probability that seeds an instance (higher keeps half-separated neighbours together, lower splits more); default: the model card's building_seed_p, else 0.6. Needs --probabilities.")
    ] = None,
    landscape: Annotated[
        str | None, typer.Option("--landscape", help="Boundary models: split touching buildings along the 'edge' probability or half way between seeds ('distance'); default: the model card's building_landscape, else edge. Needs --probabilities.")
    ] = None,
) -> None:
    """Predict class masks for a scene chunk by chunk into a COG, then vectorize them.

    A failed chunk is written to OUT/failures.jsonl and the run exits with status 2;
    rerun with --resume to compute only the chunks that are missing.
    """
    from terraseg.io.inputs import scene_input

    inp = scene_input(scene, asset=asset)  # a bad STAC item fails here, before torch loads
    from terraseg.api import predict_to_dir

    result = predict_to_dir(
        inp,
        out,
        model=model,
        tile_px=tile_px,
        overlap_px=overlap_px,
        chunk_px=chunk_px,
        batch_size=batch_size,
        device=device,
        amp=amp,
        ramp=ramp,
        backend=backend,
        write_probabilities=probabilities,
        assume_crs=assume_crs,
        overwrite=overwrite,
        show_progress=bool(_state["progress"]),
        resample=resample,
        tta=tta,
        min_score=min_score,
        min_area_m2=min_area_m2,
        seed_p=seed_p,
        landscape=landscape,
        vectorize=vectorize,
        resume=resume,
    )
    _report_predict(result)


def _report_predict(result: Any) -> None:
    """What ``terraseg predict`` wrote, in three lines at most."""
    st = result.stats
    resumed = st.get("chunks_resumed") or 0
    typer.echo(
        f"wrote {result.classes_path} ({st['shape'][0]}x{st['shape'][1]} px, "
        f"{st['grid']['n_chunks']} chunks{f' ({resumed} resumed)' if resumed else ''}, "
        f"{st['tiles_run']} tiles) in {st['seconds']['wall']:.1f} s, "
        f"{st['throughput_mpx_s']:.2f} Mpx/s, peak RSS {st['peak_rss_mb']:.0f} MB; details in "
        f"{result.run_json}"
    )
    if result.n_instances is not None:
        typer.echo(f"wrote {result.out_dir / 'instances.tif'} ({result.n_instances} building "
                   "instances)")
    if result.counts:
        counts = ", ".join(f"{n} {k}" for k, n in result.counts.items())
        paths = ", ".join(p for k, p in result.outputs.items()
                          if k.endswith((".gpkg", ".qgz", ".fgb", ".parquet")))
        typer.echo(f"wrote {paths} ({counts})")


def _vectorize_and_report(
    classes: Path, instances: Path, out_dir: Path, name: str, *, chunk_px: int,
    overwrite: bool, probabilities: Path | None = None, given_instances: bool = False,
    imagery: Path | None = None, run_info: dict[str, object] | None = None,
) -> None:
    from terraseg.engine.postprocess import vectorize_scene

    res = vectorize_scene(classes, instances, out_dir, scene_name=name, chunk_px=chunk_px,
                          label=not given_instances, probabilities_path=probabilities,
                          overwrite=overwrite, imagery=imagery, run_info=run_info)
    if res.n_instances is not None:
        typer.echo(f"wrote {instances} ({res.n_instances} building instances)")
    counts = ", ".join(f"{n} {k}" for k, n in res.layers.counts().items())
    paths = ", ".join(str(p) for p in res.export.paths if p.suffix != ".tif")
    typer.echo(f"wrote {paths} ({counts})")


@app.command("vectorize")
def vectorize_cmd(
    mask: Annotated[
        Path,
        typer.Argument(
            help="Class mask: classes.tif from predict, or any one-band integer raster GDAL "
            "reads (striped or tiled, int8 to uint32; building = 1, road = 2 unless it names "
            "its classes)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output GeoPackage, e.g. city.gpkg.")],
    instances: Annotated[
        Path | None,
        typer.Option(
            "--instances",
            help="Instance mask (building ids, 0 = none; any integer raster on MASK's grid); "
            "computed from MASK if omitted.",
        ),
    ] = None,
    chunk_px: Annotated[int, typer.Option("--chunk-px", help="Chunk size, pixels.")] = 2048,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    probabilities: Annotated[
        Path | None,
        typer.Option(
            "--probabilities",
            help="Probability COG of the same run: building scores, a boundary model's "
            "seeds and the card's min score, as in the run; default: probabilities.tif "
            "beside MASK when it is there.",
        ),
    ] = None,
) -> None:
    """Vectorize masks into buildings, roads and road centerlines (GeoPackage + QGIS project)."""
    if out.suffix.lower() != ".gpkg":
        from terraseg.errors import ConfigError

        raise ConfigError(f"--out '{out}' must end in .gpkg; e.g. --out {out.with_suffix('.gpkg')}")
    inst = instances if instances is not None else out.with_name("instances.tif")
    beside = mask.with_name("probabilities.tif")
    if probabilities is None and instances is None and beside.is_file():
        probabilities = beside
    _vectorize_and_report(mask, inst, out.parent, out.stem, chunk_px=chunk_px,
                          overwrite=overwrite, given_instances=instances is not None,
                          probabilities=probabilities)


@app.command("export")
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Output folder of predict/run (holds <scene>.gpkg).")],
    format: Annotated[str, typer.Option("--format", help="Comma-separated: gpkg,fgb,parquet.")] = "gpkg",  # noqa: A002
    to_crs: Annotated[str | None, typer.Option("--to-crs", help="Reproject vectors, e.g. EPSG:4326.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Export folder (default RUN_DIR/export).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
) -> None:
    """Re-export a finished run in other formats or another CRS, without recomputing."""
    from terraseg.config import VectorFormat
    from terraseg.engine.postprocess import export_vectors, read_vectors
    from terraseg.errors import ConfigError

    names = [f.strip() for f in format.split(",") if f.strip()]
    bad = [f for f in names if f not in ("gpkg", "fgb", "parquet")]
    formats = [cast(VectorFormat, f) for f in names if f not in bad]
    if bad or not formats:
        raise ConfigError(f"unknown format(s) {bad or format!r}; use gpkg, fgb and/or parquet")
    gpkgs = sorted(p for p in run_dir.glob("*.gpkg") if not p.name.startswith("."))
    if not gpkgs:
        raise ConfigError(f"no <scene>.gpkg in '{run_dir}'; run `terraseg predict` or `terraseg run` first")
    dest = out if out is not None else run_dir / "export"
    for gpkg in gpkgs:
        masks = {m.stem: m for m in (run_dir / "classes.tif", run_dir / "instances.tif") if m.exists()}
        res = export_vectors(read_vectors(gpkg), dest, scene_name=gpkg.stem, formats=formats,
                             masks=masks, to_crs=to_crs, overwrite=overwrite)
        typer.echo(f"exported {gpkg.name}: {', '.join(str(p) for p in res.paths)}")


@app.command()
def plan(
    scene: Annotated[str, typer.Argument(help="Input GeoTIFF/COG: path, URL or STAC item.")],
    tile_px: Annotated[int, typer.Option("--tile-px")] = 512,
    overlap_px: Annotated[int, typer.Option("--overlap-px")] = 64,
    chunk_px: Annotated[int, typer.Option("--chunk-px")] = 2048,
    assume_crs: Annotated[str | None, typer.Option("--assume-crs")] = None,
    asset: Annotated[str, typer.Option("--asset", help="STAC asset key or role.")] = "visual",
) -> None:
    """Dry run: print the chunk grid and tile lattice for a scene (reads no pixels)."""
    import json

    from terraseg.api import plan_summary

    typer.echo(
        json.dumps(
            plan_summary(
                scene,
                tile_px=tile_px,
                overlap_px=overlap_px,
                chunk_px=chunk_px,
                assume_crs=assume_crs,
                asset=asset,
            ),
            indent=2,
        )
    )


@app.command()
def run(
    workflow: Annotated[Path, typer.Argument(help="Workflow YAML (see workflows/).")],
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", help="Dask scheduler address (tcp://host:8786).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (overrides outputs.dir).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing outputs.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; compute nothing.")
    ] = False,
) -> None:
    """Run a batch workflow over many scenes on Dask (LocalCluster or a running scheduler)."""
    import json

    from terraseg.config import load_workflow
    from terraseg.engine.batch import plan_workflow, run_workflow

    wf = load_workflow(workflow)
    if dry_run:
        typer.echo(json.dumps(plan_workflow(wf, out=out), indent=2))
        return
    with progress_bars(enabled=bool(_state["progress"])) as bar:
        result = run_workflow(
            wf, out=out, scheduler=scheduler, resume=resume, overwrite=overwrite, progress=bar,
            announce=lambda line: typer.echo(f"terraseg: {line}", err=True),
        )
    for s in result.scenes:
        st = s.stats
        typer.echo(
            f"{s.scene}: {len(s.outputs)} outputs in {s.out_dir} "
            f"({st.get('chunks_computed', 0)} chunks computed, "
            f"{st.get('chunks_resumed', 0)} resumed)"
        )
    typer.echo(
        f"run '{result.name}' done in {result.seconds:.1f} s; summary in "
        f"{Path(result.out_dir) / 'run.json'}"
    )


@app.command()
def validate(
    workflow: Annotated[Path, typer.Argument(help="Workflow YAML to check.")],
) -> None:
    """Check a workflow file and its inputs without running anything."""
    from terraseg.config import load_workflow
    from terraseg.engine.batch import plan_workflow

    plan_ = plan_workflow(load_workflow(workflow))
    typer.echo(
        f"{workflow}: valid; {plan_['n_scenes']} scene(s), {plan_['chunk_tasks']} chunk "
        f"tasks, {plan_['megapixels']} Mpx; stages {', '.join(plan_['stages'])}"
    )


from terraseg.cli.evaluate import evaluate_command  # noqa: E402
from terraseg.cli.extract import extract_command  # noqa: E402
from terraseg.cli.models import models_app, train_command  # noqa: E402
from terraseg.cli.segment import segment_command  # noqa: E402

app.add_typer(models_app, name="models")
app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
app.command("segment")(segment_command)
app.command("extract")(extract_command)


def main() -> None:
    """Entry point of the ``terraseg`` console script."""
    from terraseg.cli.hugepages import reexec_with_hugepages

    reexec_with_hugepages()  # once, before any work: huge pages for big CPU tensors
    _state.update(debug=False, progress=True)  # the root callback sets them from the options
    try:
        app(standalone_mode=False)
    except TrainingPaused as exc:  # not a failure: run again with --resume
        typer.echo(f"terraseg: {exc}", err=True)
        sys.exit(75)
    except TerrasegError as exc:
        if _state["debug"]:
            raise
        typer.echo(f"terraseg: error: {exc}", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("terraseg: aborted", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        if _state["debug"]:
            raise
        typer.echo("terraseg: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2)
        if _state["debug"]:
            raise
        from terraseg.cli.output import one_line

        typer.echo(
            f"terraseg: error: internal error: {type(exc).__name__}: {one_line(str(exc))}; "
            "rerun with --debug for the traceback and report it",
            err=True,
        )
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
