"""``exouptake dataset pack|verify|validate|fetch``."""

from __future__ import annotations

import sys
from typing import Any

from ..datasets import (
    DatasetError,
    compute_checksums,
    fetch_bundle,
    open_bundle,
    pack_bundle,
    validate_bundle,
    verify_bundle,
)


def _print_err(msg: str) -> None:
    print(msg, file=sys.stderr)


def main_dataset(args: Any) -> int:
    """``exouptake dataset pack|verify|validate|fetch`` (``args`` from the CLI's argparse).

    Returns
    -------
    int
        0 success; 1 verification or validation failed, or a download failed; 2 usage error.
    """
    action = args.dataset_command
    try:
        if action == "pack":
            authors = getattr(args, "author", None) or getattr(args, "authors", None) or ()
            if isinstance(authors, str):
                authors = [a.strip() for a in authors.split(",") if a.strip()]
            out = pack_bundle(
                args.src,
                args.config,
                args.out,
                with_results=bool(getattr(args, "with_results", False)),
                labels=getattr(args, "labels", None),
                name=getattr(args, "name", None),
                description=getattr(args, "description", None),
                licence=getattr(args, "licence", None)
                or getattr(args, "license", None)
                or "CC-BY-4.0",
                authors=list(authors),
                progress=print,
            )
            with open_bundle(out) as b:
                n = len(b.image_names)
                ref = "with reference results" if b.reference_dir else "no reference results"
            print(
                f"wrote bundle {out} ({n} images, {ref}); verify with "
                f"`exouptake dataset verify {out}`"
            )
            return 0
        if action == "verify":
            problems = verify_bundle(args.bundle)
            if problems:
                for line in problems:
                    _print_err(f"exouptake dataset verify: {line}")
                _print_err(
                    f"exouptake dataset verify: {args.bundle}: FAILED ({len(problems)} problem(s))"
                )
                return 1
            with open_bundle(args.bundle, verify=False) as b:
                n_files = len(compute_checksums(b.root))
            print(f"{args.bundle}: OK ({n_files} files, every SHA-256 and the schema check out)")
            return 0
        if action == "validate":
            try:
                bundle = open_bundle(args.bundle)
            except DatasetError as exc:
                _print_err(f"exouptake dataset validate: {exc}")
                return 1
            with bundle:
                print(
                    f"validating bundle {bundle.name!r}: {len(bundle.image_names)} images, "
                    f"labels: {bundle.analysis_labels_mode}"
                )
                report = validate_bundle(bundle, progress=lambda s: print("  " + s))
            print(report.format())
            if not report.ok:
                _print_err(
                    "exouptake dataset validate: disagrees with the reference in: "
                    + ", ".join(report.failed_metrics)
                )
                return 1
            if report.has_reference:
                print(f"all {len(report.comparisons)} metrics agree with the reference")
            return 0
        if action == "fetch":
            try:
                root = fetch_bundle(args.url, args.sha256, getattr(args, "out", None))
            except DatasetError as exc:
                _print_err(f"exouptake dataset fetch: {exc}")
                return 1
            print(f"fetched and verified: {root}")
            return 0
    except DatasetError as exc:
        _print_err(f"exouptake dataset {action}: error: {exc}")
        return 2
    _print_err(f"exouptake dataset: unknown action {action!r}")
    return 2
