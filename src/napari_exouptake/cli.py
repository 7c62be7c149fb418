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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default; wider help column."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # required options and switches have no default worth showing; options whose default
        # is "not given" say in their help what happens then
        default = action.default
        if action.required or default is None or default is False or default == argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    fmt = {"formatter_class": _HelpFormatter}
    p = argparse.ArgumentParser(
        prog="exouptake",
        description="Exosome uptake, angiogenesis and collagen quantification (napari-exouptake). "
        "Exit codes: 0 success; 1 some inputs failed (see failures.csv); 2 usage or config error.",
        **fmt,
    )
    p.add_argument("--version", action="version", version=f"exouptake {__version__}")
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more console output (-v info, -vv debug)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="run the whole pipeline on the bundled sample dataset", **fmt)
    d.add_argument("--out", type=Path, default=Path("exouptake_demo"), help="output folder")

    c = sub.add_parser("config", help="print or check an assay config", **fmt)
    c.add_argument("--template", action="store_true", help="print a commented default config")
    c.add_argument("--check", type=Path, metavar="FILE", help="validate a config file")
    c.add_argument(
        "--image",
        type=Path,
        metavar="IMG",
        help="with --check: also resolve every channel role against this image's channels",
    )

    a = sub.add_parser("analyze", help="segment, detect puncta and measure cells", **fmt)
    a.add_argument("inputs", nargs="+", help="image files, folders or globs")
    a.add_argument("--config", type=Path, required=True, help="assay config (YAML)")
    a.add_argument("--out", type=Path, required=True, help="output folder (a rerun resumes)")
    a.add_argument(
        "--labels", type=Path, help="label image, or folder of <image>_cells.tif (no segmenting)"
    )
    a.add_argument("--workers", type=int, default=1, help="local worker processes")
    a.add_argument(
        "--scheduler", help="Dask scheduler address, or 'local' for a local cluster (none: serial)"
    )
    a.add_argument("--sample-sheet", type=Path, help="CSV: pattern,condition,dose,replicate,well")
    a.add_argument("--max-pixels", type=int, help=_MAX_PIXELS_HELP)

    s = sub.add_parser("segment", help="segmentation only: writes labels/<image>_cells.tif", **fmt)
    s.add_argument("inputs", nargs="+", help="image files, folders or globs")
    s.add_argument("--config", type=Path, required=True, help="assay config (YAML)")
    s.add_argument("--out", type=Path, required=True, help="output folder")
    s.add_argument("--max-pixels", type=int, help=_MAX_PIXELS_HELP)

    m = sub.add_parser("simulate", help="synthetic assay images with exact ground truth", **fmt)
    m.add_argument("--out", type=Path, required=True, help="output folder")
    m.add_argument("--n-images", type=int, default=8, help="number of images")
    m.add_argument("--seed", type=int, default=0, help="random seed (same seed, same images)")
    m.add_argument("--difficulty", default="normal", help="easy | normal | hard | 0..1")
    m.add_argument("--size", type=int, default=512, help="image height and width in pixels")

    r = sub.add_parser("report", help="per-condition statistics, plots, one HTML file", **fmt)
    r.add_argument("results", type=Path, help="output folder of `exouptake analyze`")
    r.add_argument("--control", help="control condition name (none: from the run's config)")
    r.add_argument("--out", type=Path, help="HTML file (none: RESULTS/report.html)")

    t = sub.add_parser("train", help="train or fine-tune a Cellpose model (Cellpose 3)", **fmt)
    t.add_argument("--images", type=Path, required=True, help="folder of training images")
    t.add_argument("--labels", type=Path, required=True, help="folder of <image>_cells.tif")
    t.add_argument("--out", type=Path, required=True, help="output model file")
    t.add_argument("--channels", default="cell,nucleus", help="roles or indices, e.g. 1,0")
    t.add_argument("--epochs", type=int, default=100, help="training epochs")
    t.add_argument("--seed", type=int, default=0, help="random seed")
    t.add_argument("--learning-rate", type=float, default=0.005, help="AdamW peak rate")
    t.add_argument("--from-model", help="start from this model (fine-tuning; none: from scratch)")

    v = sub.add_parser("validate", help="accuracy of a run against ground truth", **fmt)
    v.add_argument("results", type=Path, help="output folder of `exouptake analyze`")
    v.add_argument(
        "--truth", type=Path, required=True, help="simulator folder or reference results folder"
    )

    ds = sub.add_parser("dataset", help="shareable dataset bundles", **fmt)
    dsub = ds.add_subparsers(dest="dataset_command", metavar="ACTION")
    pk = dsub.add_parser("pack", help="make a bundle from a folder of images", **fmt)
    pk.add_argument("src", type=Path, help="folder of images")
    pk.add_argument("--config", type=Path, required=True, help="assay config (YAML)")
    pk.add_argument("--out", type=Path, required=True, help="bundle folder or .zip")
    pk.add_argument(
        "--with-results", action="store_true", help="analyse and include reference results"
    )
    pk.add_argument("--name", help="bundle name (none: the folder's name)")
    pk.add_argument(
        "--labels", help="'ground_truth' or a label folder: quantify with these, not segmenting"
    )
    pk.add_argument("--description", help="one-paragraph description")
    pk.add_argument("--licence", default="CC-BY-4.0", help="data licence (SPDX id)")
    pk.add_argument("--author", action="append", help="author name (repeat for several)")
    for name, helptext in (
        ("verify", "check every hash and the schema"),
        ("validate", "re-run the analysis and compare with the reference results"),
    ):
        x = dsub.add_parser(name, help=helptext, **fmt)
        x.add_argument("bundle", type=Path, help="bundle folder or .zip")
    f = dsub.add_parser("fetch", help="download a bundle (hash checked)", **fmt)
    f.add_argument("url", help="https:// or file:// address of the bundle")
    f.add_argument("--sha256", required=True, help="expected SHA-256 of the download")
    f.add_argument("--out", type=Path, help="where to put it (none: the pooch cache)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``exouptake`` console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    console = _console_logging(args.verbose)
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
    finally:
        console.summary()


class _ConsoleFilter(logging.Filter):
    """The console shows each warning once (repeats are counted and summarised at the end)
    and, unless ``-v``, nothing below ERROR from other packages (Cellpose, torch warnings):
    those go to the run's log file only."""

    def __init__(self, verbose: int) -> None:
        super().__init__()
        self.verbose = verbose
        self.seen: set[tuple[str, str]] = set()
        self.repeats = 0

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name.startswith("napari_exouptake")
        if not self.verbose and not ours and record.levelno < logging.ERROR:
            return False
        if record.levelno >= logging.WARNING and not self.verbose:
            key = (record.name, record.getMessage())
            if key in self.seen:
                self.repeats += 1
                return False
            self.seen.add(key)
        return True

    def summary(self) -> None:
        if self.repeats:
            print(
                f"exouptake: {self.repeats} repeated warning(s) not shown (all are in the "
                "run's exouptake.log)",
                file=sys.stderr,
            )
        self.repeats = 0


class _TqdmSafeHandler(logging.Handler):
    """Writes records to stderr through ``tqdm.write``, so they never break a progress bar
    (and ``tqdm``'s logging redirect, which drops filters, leaves it alone)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def _console_logging(verbose: int) -> _ConsoleFilter:
    """Console log: warnings only by default (-v: info, -vv: debug); Python warnings are
    routed to logging so they land in the log file, not on the console."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_exouptake_console", False):
            root.removeHandler(h)
    handler = _TqdmSafeHandler()
    handler._exouptake_console = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    filt = _ConsoleFilter(verbose)
    handler.addFilter(filt)
    handler.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > handler.level:
        root.setLevel(handler.level)
    logging.captureWarnings(True)
    return filt


def _load_config(path: Path):
    from .config import load_config

    return load_config(path)


def _cmd_config(args) -> int:
    from .config import template_config

    if args.image and not args.check:
        raise UsageError("--image needs --check FILE (the config to check against the image)")
    if args.check:
        cfg = _load_config(args.check)
        if args.image:
            from .io import read_image
            from .pipeline import check_channels

            image = read_image(args.image, axes=cfg.axes)
            roles = check_channels(cfg, image.channel_names)
            names = image.channel_names
            print(f"{args.check}: valid for {args.image.name}:")
            for key, idx in roles.items():
                print(f"  {key:<28} -> channel {idx} ({names[idx]})")
            return EXIT_OK
        print(
            f"{args.check}: valid ({len(cfg.channels.markers)} marker(s)); channel names are "
            "checked against an image with --image IMG"
        )
        return EXIT_OK
    if args.template:
        sys.stdout.write(template_config())
        return EXIT_OK
    raise UsageError("give --template to print a default config, or --check FILE [--image IMG]")


def _cmd_simulate(args) -> int:
    from .commands.simulate import main_simulate

    if args.n_images < 1:
        raise UsageError("--n-images must be at least 1")
    print(main_simulate(args.out, args.n_images, args.seed, args.difficulty, args.size))
    return EXIT_OK


def _cmd_demo(args) -> int:
    from .commands.demo import run_demo

    return run_demo(args.out)


def _cmd_analyze(args) -> int:
    from .commands.analyze import run_analyze

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
    from .commands.segment import run_segment

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
    from .commands.report import main_report

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
