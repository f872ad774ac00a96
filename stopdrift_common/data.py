"""Reading the OPP summary tables, with one clear error per problem.

Both tables share their columns (in a different order); one loader serves both, parametrised by
source. Files are only read, never written.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from stopdrift_common.errors import UserError
from stopdrift_common.schema import CSV_COLUMNS, NUMERIC_COLUMNS, SOURCES

FILES = {"state": "opp-stops_state.csv", "city": "opp-stops_city.csv"}


def table_path(data_dir: Path, source: str) -> Path:
    if source not in FILES:
        raise UserError(f"unknown source {source!r}: choose one of {', '.join(SOURCES)}")
    return Path(data_dir) / FILES[source]


def load_table(path: Path, source: str | None = None) -> pd.DataFrame:
    """Read one table, check its columns and types, return it with columns in CSV_COLUMNS order
    plus a ``source`` column. Raises UserError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, keep_default_na=True, na_values=["NA"])
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in CSV_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(
            f"{path}: missing column(s) {', '.join(missing)} "
            f"(expected {', '.join(CSV_COLUMNS)}; found {', '.join(map(str, df.columns))})"
        )
    if df.empty:
        raise UserError(f"{path}: the file has a header but no rows")
    for col in NUMERIC_COLUMNS:
        if not pd.api.types.is_numeric_dtype(df[col]):
            converted = pd.to_numeric(df[col], errors="coerce")
            bad = df[col][converted.isna() & df[col].notna()]
            raise UserError(
                f"{path}: column {col} must be numeric, found text {str(bad.iloc[0])!r} "
                f"in row {int(bad.index[0]) + 2}"
            )
    df = df[CSV_COLUMNS].copy()
    df["source"] = source or _guess_source(path)
    return df


def load_source(data_dir: Path, source: str) -> pd.DataFrame:
    """``source`` is ``state``, ``city`` or ``both`` (state rows then city rows)."""
    if source == "both":
        return pd.concat([load_source(data_dir, s) for s in SOURCES], ignore_index=True)
    return load_table(table_path(data_dir, source), source)


def _guess_source(path: Path) -> str:
    return "city" if "city" in path.name else "state"
