"""The ``exouptake`` command.

Exit codes (see CONTRACT.md): 0 success; 1 some inputs failed (listed in ``failures.csv``, the
rest written); 2 usage or config error, with a one-line message and no traceback.

Heavy modules are imported inside each command so ``exouptake --version`` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ._version import __version__

__all__ = ["main"]

log = logging.getLogger("napari_exouptake")

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A mistake on the command line: printed as one line, exit code 2."""


_MAX_PIXELS_HELP = (
    "largest image (pixels, all channels/planes) a worker may read; "
    "default: available memory / workers / 100 bytes"
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="exouptake",
        description="Exosome uptake, angiogenesis and collagen quantification (napari-exouptake).",
    )
    p.add_argument("--version", action="version", version=f"exouptake {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="run the whole pipeline on the bundled sample dataset")
    d.add_argument("--out", type=Path, default=Path("exouptake_demo"), help="output folder")

    c = sub.add_parser("config", help="print or check an assay config")
    c.add_argument("--template", action="store_true", help="print a commented default config")
    c.add_argument("--check", type=Path, metavar="FILE", help="validate a config file")

    a = sub.add_parser("analyze", help="segment, detect puncta and measure cells")
    a.add_argument("inputs", nargs="+", help="image files, folders or globs")
    a.add_argument("--config", type=Path, required=True, help="assay config (YAML)")
    a.add_argument("--out", type=Path, required=True, help="output folder")
    a.add_argument("--labels", type=Path, help="label image, or folder of <image>_cells.tif")
    a.add_argument("--workers", type=int, default=1, help="local worker processes")
    a.add_argument("--scheduler", help="Dask scheduler address, or 'local' for a local cluster")
    a.add_argument("--sample-sheet", type=Path, help="CSV: pattern,condition,dose,replicate,well")
    a.add_argument("--max-pixels", type=int, help=_MAX_PIXELS_HELP)

    s = sub.add_parser("segment", help="segmentation only: writes labels/<image>_cells.tif")
    s.add_argument("inputs", nargs="+")
    s.add_argument("--config", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--max-pixels", type=int, help=_MAX_PIXELS_HELP)

    m = sub.add_parser("simulate", help="synthetic assay images with exact ground truth")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--n-images", type=int, default=8)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--difficulty", default="normal", help="easy | normal | hard | 0..1")
    m.add_argument("--size", type=int, default=512, help="image height and width in pixels")

    r = sub.add_parser("report", help="per-condition statistics, plots, one HTML file")
    r.add_argument("results", type=Path)
    r.add_argument("--control", help="control condition name (default: from run config)")
    r.add_argument("--out", type=Path, help="HTML file (default RESULTS/report.html)")

    t = sub.add_parser("train", help="train or fine-tune a Cellpose model (Cellpose 3)")
    t.add_argument("--images", type=Path, required=True, help="folder of training images")
    t.add_argument("--labels", type=Path, required=True, help="folder of <image>_cells.tif")
    t.add_argument("--out", type=Path, required=True, help="output model file")
    t.add_argument("--channels", default="cell,nucleus", help="roles or indices, e.g. 1,0")
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--learning-rate", type=float, default=0.005, help="AdamW peak rate")
    t.add_argument("--from-model", help="start from this model (fine-tuning)")

    v = sub.add_parser("validate", help="accuracy of a run against ground truth")
    v.add_argument("results", type=Path)
    v.add_argument("--truth", type=Path, required=True)

    ds = sub.add_parser("dataset", help="shareable dataset bundles")
    dsub = ds.add_subparsers(dest="dataset_command", metavar="ACTION")
    pk = dsub.add_parser("pack", help="make a bundle from a folder of images")
    pk.add_argument("src", type=Path)
    pk.add_argument("--config", type=Path, required=True)
    pk.add_argument("--out", type=Path, required=True)
    pk.add_argument("--with-results", action="store_true")
    pk.add_argument("--name")
    pk.add_argument(
        "--labels", help="'ground_truth' or a label folder: quantify with these, not segmenting"
    )
    pk.add_argument("--description")
    pk.add_argument("--licence", default="CC-BY-4.0")
    pk.add_argument("--author", action="append", help="author name (repeat for several)")
    for name, helptext in (
        ("verify", "check every hash and the schema"),
        ("validate", "re-run the analysis and compare with the reference results"),
    ):
        x = dsub.add_parser(name, help=helptext)
        x.add_argument("bundle", type=Path)
    f = dsub.add_parser("fetch", help="download a bundle (hash checked)")
    f.add_argument("url")
    f.add_argument("--sha256", required=True)
    f.add_argument("--out", type=Path)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``exouptake`` console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    quiet = args.command == "demo"  # the demo prints its own progress and summary
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose > 1
        else logging.INFO
        if args.verbose or not quiet
        else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from .config import ConfigError
    from .io import ImageReadError

    user_errors: tuple[type[BaseException], ...] = (
        UsageError,
        ConfigError,
        ImageReadError,
        FileNotFoundError,
    )
    if args.command in ("segment", "analyze", "train", "demo"):
        from .segmentation import ModelNotAvailableError

        user_errors += (ModelNotAvailableError,)
    handler = globals()[f"_cmd_{args.command}"]
    try:
        return int(handler(args) or 0)
    except user_errors as exc:
        print(f"exouptake {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # file-system trouble (permissions, disk full): one line, exit 2
        where = f" {str(exc.filename)!r}" if exc.filename else ""
        print(f"exouptake {args.command}: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("exouptake: interrupted", file=sys.stderr)
        return 130


def _load_config(path: Path):
    from .config import load_config

    return load_config(path)


def _cmd_config(args) -> int:
    from .config import template_config

    if args.check:
        cfg = _load_config(args.check)
        print(f"{args.check}: valid ({len(cfg.channels.markers)} marker(s))")
        return EXIT_OK
    if args.template:
        sys.stdout.write(template_config())
        return EXIT_OK
    raise UsageError("give --template to print a default config, or --check FILE")


def _cmd_simulate(args) -> int:
    from .commands.simulate import main_simulate

    if args.n_images < 1:
        raise UsageError("--n-images must be at least 1")
    print(main_simulate(args.out, args.n_images, args.seed, args.difficulty, args.size))
    return EXIT_OK


def _cmd_demo(args) -> int:
    from .pipeline import run_demo

    return run_demo(args.out)


def _cmd_analyze(args) -> int:
    from .batch import run_analyze

    cfg = _load_config(args.config)
    return run_analyze(
        args.inputs,
        cfg,
        args.out,
        labels=args.labels,
        workers=args.workers,
        scheduler=args.scheduler,
        sample_sheet=args.sample_sheet,
        max_pixels=args.max_pixels,
    )


def _cmd_segment(args) -> int:
    from .batch import run_segment

    cfg = _load_config(args.config)
    return run_segment(args.inputs, cfg, args.out, max_pixels=args.max_pixels)


def _cmd_train(args) -> int:
    from .commands.train import main_train

    return main_train(
        images=args.images,
        labels=args.labels,
        out=args.out,
        channels=args.channels,
        epochs=args.epochs,
        seed=args.seed,
        learning_rate=args.learning_rate,
        from_model=args.from_model,
    )


def _cmd_report(args) -> int:
    from .report import main_report

    return main_report(args.results, control=args.control, out=args.out)


def _cmd_validate(args) -> int:
    from .commands.validate import main_validate

    return main_validate(args.results, args.truth)


def _cmd_dataset(args) -> int:
    from .commands.dataset import main_dataset

    if args.dataset_command is None:
        raise UsageError("give an action: pack, verify, validate or fetch")
    return main_dataset(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
