"""Peak RSS of a training process that opens the dataset cache and reads rows from it.

    OMP_NUM_THREADS=1 python bench/dataset_cache_rss.py [--records 1000000] [--rows 4000]

Writes one cache of `--records` synthetic documents (16-112 tokens, 64 on average, a
realistic size for chat records; packed into 2048-token rows) in both layouts:

- `npz`: one arrays.npz, loaded whole into memory (the layout before CACHE_VERSION 4);
- `mmap`: one .npy per array, memory-mapped read-only by `data.dataset.map_arrays`, as
  `build_cached` opens a cached build (now).

Then, for each layout, a fresh process opens the cache and collates `--rows` random rows
(what a data loader of one training process does) and reports its peak RSS (VmHWM),
its private (anonymous) and file-backed resident memory at the end, and the time to open
the cache; `none` opens nothing (the imports alone). File-backed pages are the page cache,
shared by every process that maps the file; private memory is held by each process, so
under N training processes the npz layout holds N copies of the tokens.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from tunesmith.data import dataset
layout, path, rows = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
start = time.perf_counter()
if layout == "none":  # the imports alone: the floor of every process
    ds = None
elif layout == "npz":
    with np.load(path / "arrays.npz") as f:
        arrays = {k: f[k] for k in f.files}
    summary = json.loads((path / "summary.json").read_text())
    ds = dataset.TrainDataset(arrays, summary, 0)
else:
    summary = json.loads((path / "summary.json").read_text())
    ds = dataset.TrainDataset(dataset.map_arrays(path), summary, 0)
opened = time.perf_counter() - start
import torch  # collate's, imported in every layout
rng = np.random.default_rng(0)
for i in (rng.integers(0, len(ds), rows) if ds is not None else []):
    batch = ds.collate([ds[int(i)]])
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
kib = lambda key: int(status[key].split()[0]) / 1024
print(json.dumps({"open_s": opened, "anon_mib": kib("RssAnon"), "file_mib": kib("RssFile"),
                  "peak_rss_mib": kib("VmHWM")}))
"""


def synthetic_arrays(records: int, max_length: int = 2048) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    lengths = rng.integers(16, 113, records)
    doc_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(doc_offsets[-1])
    ids = rng.integers(0, 49152, total, dtype=np.int32)
    labels = ids.copy()
    labels[doc_offsets[:-1]] = -100
    # greedy packing in order (the layout, not the packing quality, is what is measured)
    row_starts = [0]
    used = 0
    for d, n in enumerate(lengths):
        if used + n > max_length:
            row_starts.append(d)
            used = 0
        used += n
    row_offsets = np.array(row_starts + [records], dtype=np.int64)
    arrays = {
        "ids": ids,
        "labels": labels,
        "doc_offsets": doc_offsets,
        "raw_lengths": lengths.astype(np.int64),
        "row_offsets": row_offsets,
        "row_docs": np.arange(records, dtype=np.int64),
    }
    summary = {"records": records, "tokens": total, "rows": len(row_offsets) - 1, "packed": True}
    return arrays, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rows", type=int, default=4000)
    args = parser.parse_args()
    arrays, summary = synthetic_arrays(args.records)
    size_mib = sum(a.nbytes for a in arrays.values()) / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        npz, mmap = Path(tmp) / "npz", Path(tmp) / "mmap"
        for d in (npz, mmap):
            d.mkdir()
            (d / "summary.json").write_text(json.dumps(summary))
        np.savez(npz / "arrays.npz", **arrays)
        for name, array in arrays.items():
            np.save(mmap / f"{name}.npy", array)
        del arrays
        print(
            f"{args.records:,} records, {summary['tokens']:,} tokens, {summary['rows']:,} rows, "
            f"arrays {size_mib:.0f} MiB; parent RSS "
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
        )
        for layout, path in (("none", mmap), ("npz", npz), ("mmap", mmap)):
            start = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", CHILD, layout, str(path), str(args.rows)],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{layout:>5}: peak RSS {result['peak_rss_mib']:.0f} MiB (at the end: private "
                f"{result['anon_mib']:.0f} MiB, file-backed {result['file_mib']:.0f} MiB), opened in "
                f"{result['open_s']:.2f} s, {args.rows} rows collated, process "
                f"{time.perf_counter() - start:.1f} s"
            )


if __name__ == "__main__":
    main()
