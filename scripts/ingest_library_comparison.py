"""The ingest's heaviest step with one data library per run (issue 13): read PRESCRIPTIONS
(subject_id, hadm_id, ndc) from a synthetic cohort's CSV, drop rows without ids and empty or
zero NDCs, map NDC -> ATC3 (the cohort's own ndc2rxnorm + RXCUI2atc4 files), and count the drops.

    python scripts/ingest_library_comparison.py LIB RAW_DIR AUX_DIR
    LIB: pandas (the reader before issue 13: pd.read_csv(engine="pyarrow") + pandas coercion and
         merge; run it with PYTHONPATH pointing at that commit's src), pyarrow (pyarrow.csv with
         the NDC dictionary-encoded, mapped on the distinct values: the ingest's reader now),
         pyarrow_stream (the same, streamed in 64 MiB blocks), polars (scan_csv, streaming
         engine, join), duckdb (read_csv, left join)

polars and duckdb are not dependencies of the project: install them apart, e.g.
``pip install --target /tmp/libs polars duckdb`` and ``PYTHONPATH=/tmp/libs``. The cohort:
``python -m leader_kedro.synthetic.generator --patients 400000 --out RAW_DIR`` (AUX_DIR =
RAW_DIR/aux). Prints one JSON line: the step's wall time, the rows kept, the drops and the
process's peak RSS.
"""

import json
import resource
import sys
import time

import numpy as np
import pandas as pd

from leader_kedro.ingest import readers as R

lib, raw, aux = sys.argv[1], sys.argv[2], sys.argv[3]
path = f"{raw}/PRESCRIPTIONS.csv"
t_all = time.perf_counter()

n2r = R.read_ndc2rxnorm(f"{aux}/ndc2rxnorm_mapping.txt")
r2a, _ = R.read_rxcui2atc4(f"{aux}/RXCUI2atc4.csv")
m = n2r.merge(r2a, on="rxcui")
table = pd.DataFrame({"ndc": m["ndc"], "atc3": m["atc4"].str[:4]}).drop_duplicates("ndc")
t0 = time.perf_counter()
if lib == "pandas":  # the reader of the commit on PYTHONPATH (before issue 13: pandas)
    from leader_kedro.ingest.cohort import IngestConfig, map_medications

    rx = R.read_table(path, R.MIMIC3_TABLES["prescriptions"][1])
    t_read = time.perf_counter() - t0
    meds, drops, stats = map_medications(rx, {"ndc2rxnorm": n2r, "rxcui2atc4": r2a}, IngestConfig())
    n_out = len(meds)
    out_nbytes = meds.memory_usage(deep=True).sum()
elif lib in ("pyarrow", "pyarrow_stream"):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    types = {
        "SUBJECT_ID": pa.int64(),
        "HADM_ID": pa.int64(),
        "NDC": pa.dictionary(pa.int32(), pa.string()),
    }
    co = pacsv.ConvertOptions(include_columns=list(types), column_types=types)
    lut = dict(zip(table["ndc"], table["atc3"], strict=False))
    codes = sorted(set(lut.values()))
    code_ix = {c: i for i, c in enumerate(codes)}

    def batch_map(b):
        ndc = b.column(2)
        if isinstance(ndc, pa.ChunkedArray):
            ndc = ndc.combine_chunks()
        d = ndc.dictionary.to_pylist()
        # dictionary-level cleaning: strip, remove dashes, empty/zero
        clean = [(x or "").strip().replace("-", "") for x in d]
        dmap = np.array(
            [
                -2 if (c.strip("0") == "") else code_ix.get(lut.get(c), -1) if c in lut else -1
                for c in clean
            ],
            dtype=np.int32,
        )
        idx = ndc.indices.to_numpy(zero_copy_only=False)
        valid = ~np.asarray(ndc.is_null())
        code = np.where(valid, dmap[np.where(valid, idx, 0)], -2)
        s = b.column(0).to_numpy(zero_copy_only=False)
        h = b.column(1).to_numpy(zero_copy_only=False)
        return s, h, code

    if lib == "pyarrow":
        tbl = pacsv.read_csv(path, convert_options=co)
        t_read = time.perf_counter() - t0
        parts = [batch_map(rb) for rb in tbl.to_batches()]
        del tbl
    else:
        rd = pacsv.open_csv(
            path, convert_options=co, read_options=pacsv.ReadOptions(block_size=64 << 20)
        )
        parts = [batch_map(rb) for rb in rd]
        t_read = float("nan")
    h = np.concatenate([p[1] for p in parts])
    code = np.concatenate([p[2] for p in parts])
    ok = code >= 0
    n_out = int(ok.sum())
    out_nbytes = n_out * 12
    drops = {
        "ndc_missing_or_zero": int((code == -2).sum()),
        "ndc_unmapped": int((code == -1).sum()),
    }
elif lib == "polars":
    import polars as pl

    lut = pl.DataFrame({"ndc": table["ndc"].tolist(), "atc3": table["atc3"].tolist()})
    q = (
        pl.scan_csv(
            path,
            schema_overrides={"NDC": pl.String, "SUBJECT_ID": pl.Int64, "HADM_ID": pl.Int64},
            infer_schema=False,
        )
        .select(
            pl.col("SUBJECT_ID").cast(pl.Int64),
            pl.col("HADM_ID").cast(pl.Int64),
            pl.col("NDC").str.strip_chars().str.replace_all("-", "").alias("ndc"),
        )
        .filter(pl.col("HADM_ID").is_not_null() & pl.col("SUBJECT_ID").is_not_null())
    )
    q = q.with_columns(zero=pl.col("ndc").is_null() | (pl.col("ndc").str.strip_chars("0") == ""))
    df = q.join(lut.lazy(), on="ndc", how="left").collect(engine="streaming")
    t_read = float("nan")
    drops = {
        "ndc_missing_or_zero": int(df["zero"].sum()),
        "ndc_unmapped": int((~df["zero"] & df["atc3"].is_null()).sum()),
    }
    out = df.filter(pl.col("atc3").is_not_null()).select(
        "HADM_ID", pl.col("atc3").cast(pl.Categorical)
    )
    n_out = out.height
    out_nbytes = out.estimated_size()
elif lib == "duckdb":
    import duckdb

    con = duckdb.connect()
    con.execute("PRAGMA threads=2")
    con.register("lut", table)
    q = f"""
    with rx as (
      select SUBJECT_ID, HADM_ID, replace(trim(NDC), '-', '') as ndc
      from read_csv('{path}', header=true, all_varchar=false, types={{'NDC':'VARCHAR','SUBJECT_ID':'BIGINT','HADM_ID':'BIGINT'}})
      where SUBJECT_ID is not null and HADM_ID is not null)
    select rx.HADM_ID as hadm_id, lut.atc3, (rx.ndc is null or ltrim(rx.ndc, '0') = '') as zero
    from rx left join lut on rx.ndc = lut.ndc
    """
    df = con.sql(q).arrow().read_all()
    t_read = float("nan")
    import pyarrow.compute as pc

    zero = df["zero"]
    atc = df["atc3"]
    drops = {
        "ndc_missing_or_zero": pc.sum(zero).as_py(),
        "ndc_unmapped": pc.sum(pc.and_(pc.invert(zero), pc.is_null(atc))).as_py(),
    }
    n_out = len(df) - drops["ndc_missing_or_zero"] - drops["ndc_unmapped"]
    out_nbytes = df.nbytes
t = time.perf_counter() - t0
print(
    json.dumps(
        {
            "lib": lib,
            "step_s": round(t, 1),
            "read_s": round(t_read, 1),
            "rows_out": int(n_out),
            "drops": {k: int(v) for k, v in drops.items()},
            "peak_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
            "total_s": round(time.perf_counter() - t_all, 1),
        }
    )
)
