"""Reads a Parquet file exported by kusto-sim with pyarrow, an independent reader.

Usage: check_parquet.py <file.parquet> <expected.json>

Checks that every column has the Parquet type Kusto's export documents, and that the values
(rendered the way Kusto renders them in JSON) equal the expected rows, in any order.
Prints "OK" last when all is well; exits 1 otherwise.
"""

import datetime
import decimal
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq

EXPECTED_TYPES = {
    "c_bool": pa.bool_(),
    "c_int": pa.int32(),
    "c_long": pa.int64(),
    "c_real": pa.float64(),
    "c_decimal": pa.decimal128(38, 18),
    "c_string": pa.string(),
    "c_datetime": pa.timestamp("us", tz="UTC"),
    "c_timespan": pa.int64(),
    "c_guid": pa.string(),
    "c_dynamic": pa.string(),
}

TICKS_PER_SECOND = 10_000_000


def fail(msg):
    print(f"FAILED: {msg}")
    sys.exit(1)


def kusto_datetime(us):
    d = datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=us)
    frac = (us % 1_000_000) * 10
    return d.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac:07d}" if frac else "") + "Z"


def kusto_timespan(ticks):
    sign = "-" if ticks < 0 else ""
    t = abs(ticks)
    days, rem = divmod(t, 86400 * TICKS_PER_SECOND)
    h, rem = divmod(rem, 3600 * TICKS_PER_SECOND)
    m, rem = divmod(rem, 60 * TICKS_PER_SECOND)
    s, frac = divmod(rem, TICKS_PER_SECOND)
    out = sign + (f"{days}." if days else "") + f"{h:02d}:{m:02d}:{s:02d}"
    return out + (f".{frac:07d}" if frac else "")


def kusto_decimal(d):
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def main():
    path, expected_path = sys.argv[1], sys.argv[2]
    table = pq.read_table(path)
    for name, want in EXPECTED_TYPES.items():
        got = table.schema.field(name).type
        if got != want:
            fail(f"column {name} has Parquet/Arrow type {got}, expected {want}")
        print(f"ok: {name} is {got}")
    columns = []
    for name in EXPECTED_TYPES:
        col = table.column(name)
        if name == "c_datetime":
            values = [None if v is None else kusto_datetime(v) for v in col.cast(pa.int64()).to_pylist()]
        elif name == "c_timespan":
            values = [None if v is None else kusto_timespan(v) for v in col.to_pylist()]
        elif name == "c_decimal":
            values = [None if v is None else kusto_decimal(v) for v in col.to_pylist()]
        elif name == "c_dynamic":
            values = [None if v is None else json.loads(v) for v in col.to_pylist()]
        else:
            values = col.to_pylist()
        columns.append(values)
    rows = [list(r) for r in zip(*columns)]
    with open(expected_path) as f:
        expected = json.load(f)
    key = lambda r: json.dumps(r, sort_keys=True)
    if sorted(map(key, rows)) != sorted(map(key, expected)):
        for a, b in zip(sorted(map(key, rows)), sorted(map(key, expected))):
            if a != b:
                fail(f"row differs:\n  pyarrow: {a}\n  kusto:   {b}")
        fail(f"row counts differ: {len(rows)} vs {len(expected)}")
    print(f"ok: {len(rows)} rows equal")
    print("OK")


if __name__ == "__main__":
    main()
