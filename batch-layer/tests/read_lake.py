"""Reads a lake's newest manifest and every file it lists with pyarrow, none
of lambda-pipeline's code, and prints what it found as JSON: per file its
schema, rows, row groups and compression codecs; per topic the events by
type, distinct event ids and revenue. Used by batch-layer/tests/batch.rs.

usage: python read_lake.py LAKE_DIR
"""

import collections
import json
import os
import sys

import pyarrow.compute as pc
import pyarrow.parquet as pq


def main(lake):
    manifests = sorted(os.listdir(os.path.join(lake, "manifests")))
    with open(os.path.join(lake, "manifests", manifests[-1])) as f:
        manifest = json.load(f)
    files = []
    topics = collections.defaultdict(
        lambda: {"by_type": collections.Counter(), "ids": set(), "revenue_cents": 0, "rows": 0}
    )
    for key, partition in sorted(manifest["partitions"].items()):
        paths = [("data", d["path"], d["rows"]) for d in partition["data_files"]]
        paths += [("view", v, None) for v in partition["views"].values()]
        for kind, path, rows in paths:
            full = os.path.join(lake, path)
            meta = pq.ParquetFile(full).metadata
            table = pq.read_table(full)
            codecs = sorted(
                {
                    meta.row_group(g).column(c).compression
                    for g in range(meta.num_row_groups)
                    for c in range(meta.num_columns)
                }
            )
            files.append(
                {
                    "kind": kind,
                    "path": path,
                    "rows": table.num_rows,
                    "manifest_rows": rows,
                    "row_groups": meta.num_row_groups,
                    "codecs": codecs,
                    "schema": [[f.name, str(f.type), f.nullable] for f in table.schema],
                }
            )
            if kind == "data":
                t = topics[partition["topic"]]
                t["rows"] += table.num_rows
                t["by_type"].update(table.column("event_type").to_pylist())
                t["ids"].update(table.column("event_id").to_pylist())
                if "amount_cents" in table.column_names:
                    t["revenue_cents"] += pc.sum(table.column("amount_cents")).as_py() or 0
    out = {
        "version": manifest["version"],
        "files": files,
        "topics": {
            name: {
                "rows": t["rows"],
                "distinct_ids": len(t["ids"]),
                "by_type": dict(t["by_type"]),
                "revenue_cents": t["revenue_cents"],
            }
            for name, t in topics.items()
        },
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
