"""Read a user's CSV or Parquet file (local or S3, optionally gzip-compressed) into Arrow."""

from __future__ import annotations

import gzip
import io

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from training.common import storage
from training.common.errors import DataError


def read_tabular(uri: str, column_types: dict[str, pa.DataType] | None = None,
                 what: str = "table") -> pa.Table:
    """Read ``uri`` (``.csv``, ``.csv.gz``, ``.tsv``, ``.parquet``); errors name the file."""
    storage.require_file(uri, what)
    data = storage.read_bytes(uri)
    name = str(uri).lower()
    try:
        if name.endswith(".parquet") or data[:4] == b"PAR1":
            table = pq.read_table(io.BytesIO(data))
        else:
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            if not data.strip():
                raise DataError(f"{uri}: empty file")
            delimiter = "\t" if name.endswith((".tsv", ".tsv.gz")) else ","
            table = pcsv.read_csv(
                io.BytesIO(data),
                parse_options=pcsv.ParseOptions(delimiter=delimiter),
                convert_options=pcsv.ConvertOptions(column_types=column_types or {}),
            )
    except (pa.ArrowInvalid, OSError, EOFError) as exc:
        raise DataError(f"{uri}: cannot read {what} ({str(exc).splitlines()[0]})") from exc
    if table.num_rows == 0:
        raise DataError(f"{uri}: {what} has no rows")
    return table


def require_columns(table: pa.Table, columns: list[str], where: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(repr(c) for c in missing)} "
                        f"(has: {', '.join(table.column_names)})")
