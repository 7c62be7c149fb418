"""``exouptake demo``: the whole pipeline on the bundled sample dataset, offline."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from ..batch import refresh_report
from ..config import load_config
from ..logs import log_to_file
from ..pipeline import (
    condition_summary,
    finalize,
    images_table,
    measure_image,
    sample_data_dir,
    write_outputs,
)
from ..report import condition_order

__all__ = ["run_demo"]


def run_demo(out: str | Path = "exouptake_demo") -> int:
    """``exouptake demo``: the whole pipeline on the bundled sample dataset, offline."""
    data = sample_data_dir()
    images = sorted((data / "images").glob("*.ome.tif"))
    if not images:
        raise FileNotFoundError(f"the bundled sample dataset is missing from {data}")
    config = load_config(data / "config.yaml")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"exouptake demo: {len(images)} sample images -> {out}/")

    doses = {}
    if (data / "conditions.csv").is_file():
        doses = pd.read_csv(data / "conditions.csv").set_index("image").to_dict("index")
    results = []
    t0 = time.perf_counter()
    with log_to_file(out / "exouptake.log"):  # Cellpose and torch messages go to the log
        for i, path in enumerate(images, 1):
            t = time.perf_counter()
            r = measure_image(path, config)  # positivity: once, over the run
            results.append(r)
            dev = r.provenance["segmentation"].get("device", "-")
            print(
                f"  [{i}/{len(images)}] {r.image}: {len(r.cells)} cells, {len(r.spots)} puncta "
                f"({time.perf_counter() - t:.1f} s, {dev})"
            )
        results = finalize(results, config)
        results = [  # dose for the report's ordering and dose-response plot
            replace(r, summary={**r.summary, **_dose(doses.get(r.image, {}))}) for r in results
        ]
        write_outputs(results, out, config)
        report = refresh_report(out)
    table = condition_summary(results, config)
    imgs = images_table(results)
    if "condition" in imgs.columns:  # control first, then by dose, as in the report
        order = condition_order(imgs, config.positivity.control_condition)
        table = table.reindex([c for c in order if c in table.index])
    with pd.option_context("display.width", 120, "display.max_columns", 20):
        print("\nPer-condition summary:")
        print(table.to_string())
    print(
        f"\nwrote {out}/cells.csv, spots.csv, images.csv (+ .parquet), columns.md, labels/, qc/, "
        f"run.json, exouptake.log in {time.perf_counter() - t0:.1f} s"
    )
    if report is not None:
        print(f"open the report in a web browser: {report.resolve().as_uri()}")
    return 0


def _dose(row: dict) -> dict:
    """The ``dose`` and ``dose_unit`` of an image's row of ``conditions.csv`` (those it has)."""
    return {k: row[k] for k in ("dose", "dose_unit") if k in row}
