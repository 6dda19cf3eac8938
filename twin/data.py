"""Plant batch records: load, validate, convert to internal units, align.

Process data comes in three shapes; all are validated and converted to internal units (see
`twin.units`: g, L, h, degC, bar, % DO saturation, L/h flows) when read:

1. A *long table* (CSV or Parquet, chosen by the file suffix), one measurement a row::

       batch,time_h,variable,value,unit,source
       B01,0,biomass,0.5,g/L,offline
       B01,0,volume,0.06,m3,
       B01,0.5,DO,98,%,

   `unit` may be left out when the variable names carry their unit (`DO_pct`, `biomass_g_L`,
   `volume_m3`; see :func:`parse_variable_name`). `source` is `online` or `offline`; empty or absent
   means the variable's default (`DEFAULT_SOURCE`). Aliases such as `DO`, `glucose`, `titer`,
   `X`, `PAA` and `T` are accepted for variable names.
2. A *batches table* (CSV): `batch,strain[,start,scale_L,notes]`; `start` an ISO 8601 datetime or
   empty, `scale_L` the nominal vessel volume in L (> 0) or empty.
3. A *wide CSV* of one batch: `time_h` plus one column per variable with the unit in the column
   name (`time_h,biomass_g_L,dissolved_oxygen_pct,volume_L`); empty cells mean "not measured".

Every problem raises :class:`~twin.errors.DataError` (or :class:`~twin.errors.UnitError`) naming
the file, the row and the field. Row numbers count as a spreadsheet does: in a CSV the header is
row 1; in a Parquet file the first data row is row 1; in an in-memory DataFrame rows are counted
from 0 (positional, as `df.iloc`).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError, UnitError
from .io import atomic_path
from .state import CONTROL_VARIABLES, STATE_VARIABLES, VariableInfo
from .units import lookup, to_internal

__all__ = [
    "MEASURED_VARIABLES",
    "DEFAULT_SOURCE",
    "ALIASES",
    "Interpolation",
    "BatchRecord",
    "BatchSet",
    "parse_variable_name",
    "load_batches",
    "load_batch_dir",
    "read_wide_csv",
    "write_batches",
    "batch_set_from_frames",
    "align",
    "offline_samples",
]

ONLINE, OFFLINE = "online", "offline"
_INF = float("inf")


def _v(name: str, unit: str, dimension: str, description: str, lower: float = -_INF,
       upper: float = _INF) -> VariableInfo:
    column = f"{name}_{unit.replace('/', '_').replace('%', 'pct')}"
    return VariableInfo(name, unit, dimension, description, lower, upper, column=column)


_PLANT_SIGNALS = (
    _v("offgas_o2", "mol/mol", "molar_fraction", "O2 in the off-gas", 0.0, 1.0),
    _v("offgas_co2", "mol/mol", "molar_fraction", "CO2 in the off-gas", 0.0, 1.0),
    # From the gas balance: sensor noise can make them slightly negative, so no lower bound.
    _v("oxygen_uptake_rate", "mmol/L/h", "molar_rate", "oxygen uptake rate (OUR)"),
    _v("carbon_evolution_rate", "mmol/L/h", "molar_rate", "carbon dioxide evolution rate (CER)"),
    _v("acid_flow", "L/h", "volume_flow", "acid addition for pH control", 0.0),
    _v("base_flow", "L/h", "volume_flow", "base addition for pH control", 0.0),
    _v("acid_total", "L", "volume", "cumulative acid added", 0.0),
    _v("base_total", "L", "volume", "cumulative base added", 0.0),
    _v("weight", "g", "mass", "vessel weight (load cell)", 0.0),
    _v("nitrogen", "g/L", "concentration", "nitrogen source (ammonia) concentration", 0.0),
    _v("viscosity", "cP", "viscosity", "broth viscosity", 0.0),
    _v("substrate_fed_total", "L", "volume", "cumulative sugar feed volume", 0.0),
    _v("oil_fed_total", "L", "volume", "cumulative oil feed volume", 0.0),
    _v("precursor_fed_total", "L", "volume", "cumulative precursor feed volume", 0.0),
    _v("water_fed_total", "L", "volume", "cumulative water feed volume", 0.0),
    _v("draw_total", "L", "volume", "cumulative broth withdrawn", 0.0),
)

MEASURED_VARIABLES: dict[str, VariableInfo] = {
    **STATE_VARIABLES, **CONTROL_VARIABLES, **{v.name: v for v in _PLANT_SIGNALS}}
"""Every variable a batch record may hold: internal unit, dimension, physical bounds."""

_OFFLINE_VARIABLES = frozenset(
    {"biomass", "substrate", "product", "precursor", "nitrogen", "viscosity", "oil"})
DEFAULT_SOURCE: dict[str, str] = {
    name: OFFLINE if name in _OFFLINE_VARIABLES else ONLINE for name in MEASURED_VARIABLES}
"""`offline` (lab assay) or `online` (historian) for a variable when the data does not say."""

ALIASES: dict[str, str] = {
    "DO": "dissolved_oxygen", "glucose": "substrate", "sugar": "substrate", "titer": "product",
    "penicillin": "product", "X": "biomass", "PAA": "precursor", "T": "temperature"}

_SUFFIX_UNITS = {"pct": "%", "pct_sat": "%", "mol_pct": "mol%"}  # others: as in units.py or _ -> /
_SUFFIX_EXAMPLES = ("g_L, mg_L, pct, L, mL, m3, degC, K, L_h, L_min, m3_min, kg_h, g, kg, bar, "
                    "rpm, mmol_L_h, mol_mol, mol_pct, cP")
_LONG_REQUIRED = ("batch", "time_h", "variable", "value")
_LONG_OPTIONAL = ("unit", "source")
_BATCHES_REQUIRED = ("batch", "strain")
_BATCHES_OPTIONAL = ("start", "scale_L", "notes")
_MEASUREMENT_COLUMNS = ["time_h", "variable", "value", "source"]


class Interpolation(str, enum.Enum):
    """How :func:`align` fills the times between measurements."""

    LINEAR = "linear"  # straight line between the two neighbouring samples
    PREVIOUS = "previous"  # last sample at or before the time (zero-order hold)
    NEAREST = "nearest"  # closest sample (the earlier one on a tie)


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True, eq=False)
class BatchRecord:
    """The measurements of one batch, in internal units.

    Args:
        batch: batch id.
        strain: strain name (`"unknown"` when the batches table does not say).
        scale_L: nominal vessel volume, L, or `None`.
        start: batch start as an ISO 8601 datetime, or `None`.
        notes: free text.
        measurements: columns `time_h, variable, value, source`, internal units, sorted by
            `(variable, time_h)`. Treat it as read-only.
    """

    batch: str
    strain: str
    scale_L: float | None
    start: str | None
    notes: str
    measurements: pd.DataFrame

    def variables(self) -> list[str]:
        """The measured variables, sorted by name."""
        return sorted(set(self.measurements["variable"]))

    def series(self, variable: str) -> tuple[np.ndarray, np.ndarray]:
        """Times (h) and values (internal unit) of one variable, sorted by time.

        Raises:
            DataError: `variable` is unknown or has no measurements in this batch.

        Example:
            >>> t, x = record.series("biomass")   # doctest: +SKIP
        """
        name = _known_variable(variable, where=f"batch '{self.batch}'")
        m = self.measurements
        sel = m[m["variable"] == name]
        if sel.empty:
            raise DataError("no measurements of this variable", where=f"batch '{self.batch}'",
                            field=str(variable), hint=f"measured: {', '.join(self.variables())}")
        return sel["time_h"].to_numpy(dtype=float), sel["value"].to_numpy(dtype=float)

    def until(self, t_h: float) -> "BatchRecord":
        """The record as it was known at `t_h` (h): only data with `time_h <= t_h`."""
        try:
            t = float(t_h)
        except (TypeError, ValueError):
            t = math.nan
        if math.isnan(t):
            raise DataError("must be a number", where=f"batch '{self.batch}'", field="t_h", value=t_h)
        m = self.measurements
        return replace(self, measurements=m[m["time_h"] <= t].reset_index(drop=True))

    @property
    def start_h(self) -> float:
        """Time of the first measurement, h."""
        return float(self._times().min())

    @property
    def end_h(self) -> float:
        """Time of the last measurement, h."""
        return float(self._times().max())

    def _times(self) -> np.ndarray:
        if self.measurements.empty:
            raise DataError("batch has no measurements", where=f"batch '{self.batch}'")
        return self.measurements["time_h"].to_numpy(dtype=float)


@dataclass(frozen=True, eq=False)
class BatchSet:
    """Several batch records, ordered as in the batches table; iterating yields `BatchRecord`s.

    Args:
        records: `{batch id: BatchRecord}`.
        source: the path(s) the data came from, for provenance.
    """

    records: dict[str, BatchRecord]
    source: str

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[BatchRecord]:
        return iter(self.records.values())

    def __contains__(self, batch_id: object) -> bool:
        return batch_id in self.records

    def __getitem__(self, batch_id: str) -> BatchRecord:
        if batch_id not in self.records:
            raise DataError("unknown batch id", where=self.source, field="batch", value=batch_id,
                            hint=f"known: {', '.join(self.records)}")
        return self.records[batch_id]

    @property
    def batch_ids(self) -> list[str]:
        return list(self.records)

    def select(self, batches: Sequence[str]) -> "BatchSet":
        """The named batches, in the order given; `DataError` for an unknown id."""
        batches = [batches] if isinstance(batches, str) else list(batches)
        return BatchSet({b: self[b] for b in batches}, self.source)

    def by_strain(self, strain: str) -> "BatchSet":
        """The batches of one strain; `DataError` when there are none."""
        sel = {b: r for b, r in self.records.items() if r.strain == strain}
        if not sel:
            strains = sorted({r.strain for r in self})
            raise DataError("no batch of this strain", where=self.source, field="strain",
                            value=strain, hint=f"strains: {', '.join(strains)}")
        return BatchSet(sel, self.source)

    def long_table(self) -> pd.DataFrame:
        """All measurements as `batch, time_h, variable, value, unit, source` (internal units)."""
        cols = ["batch", "time_h", "variable", "value", "unit", "source"]
        if not self.records:
            return pd.DataFrame(columns=cols)
        out = pd.concat([r.measurements.assign(batch=r.batch) for r in self], ignore_index=True)
        out["unit"] = out["variable"].map({k: v.unit for k, v in MEASURED_VARIABLES.items()})
        return out[cols]

    def batches_table(self) -> pd.DataFrame:
        """The batches table: `batch, strain, start, scale_L, notes`."""
        return pd.DataFrame(
            [(r.batch, r.strain, r.start, r.scale_L, r.notes) for r in self],
            columns=["batch", "strain", "start", "scale_L", "notes"])

    def content_hash(self) -> str:
        """SHA-256 of the data and metadata, independent of batch order, path and file format."""
        h = hashlib.sha256()
        for b in sorted(self.records):
            r = self.records[b]
            meta = {"batch": r.batch, "strain": r.strain, "start": r.start,
                    "scale_L": r.scale_L, "notes": r.notes}
            h.update(json.dumps(meta, sort_keys=True).encode())
            m = r.measurements.sort_values(["variable", "time_h"], kind="stable")
            h.update("\n".join(m["variable"]).encode() + b"\0" + "\n".join(m["source"]).encode())
            for col in ("time_h", "value"):  # + 0.0 turns -0.0 into 0.0
                h.update((np.asarray(m[col], dtype="<f8") + 0.0).tobytes())
        return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Names, units and column checks


def _canonical(name: str) -> str | None:
    return name if name in MEASURED_VARIABLES else ALIASES.get(name)


def _known_variable(name: object, *, where: object, field: str = "variable") -> str:
    canon = _canonical(str(name).strip())
    if canon is None:
        raise DataError("unknown variable", where=where, field=field, value=name,
                        hint=f"known: {', '.join(MEASURED_VARIABLES)}")
    return canon


def _suffix_unit(tail: str) -> str | None:
    for cand in (_SUFFIX_UNITS.get(tail), tail, tail.replace("_", "/")):
        if cand:
            with contextlib.suppress(UnitError):
                return lookup(cand).name
    return None


def parse_variable_name(name: str, *, where: object = None,
                        field: str | None = "variable") -> tuple[str, str | None]:
    """Split a variable name into the registry name and the unit written in it, if any.

    Aliases (`ALIASES`) are resolved; a unit suffix is any unit of `twin.units` with `_` for `/`
    (`g_L`, `mg_L`, `pct`, `m3`, `degC`, `L_h`, `kg_h`, `m3_min`, `mmol_L_h`, `mol_pct`, ...).

    Args:
        name: for example `"DO_pct"`, `"biomass_g_L"` or `"volume"`.
        where, field: where the name came from, for error messages.

    Returns:
        `(variable, unit)`, `unit` being `None` when the name carries none.

    Raises:
        DataError: the name is no known variable (the message lists the known ones).
        UnitError: the name is a known variable followed by an unknown unit suffix.

    Example:
        >>> parse_variable_name("DO_pct")
        ('dissolved_oxygen', '%')
    """
    text = str(name).strip()
    if (canon := _canonical(text)) is not None:
        return canon, None
    parts = text.split("_")
    bad = None
    for i in range(len(parts) - 1, 0, -1):  # longest variable name first
        var, tail = _canonical("_".join(parts[:i])), "_".join(parts[i:])
        if var is None or not tail:
            continue
        if (unit := _suffix_unit(tail)) is not None:
            return var, unit
        bad = bad or (var, tail)
    if bad is not None:
        raise UnitError(f"unknown unit suffix '{bad[1]}' after variable {bad[0]}", where=where,
                        field=field, value=text, hint=f"unit suffixes look like {_SUFFIX_EXAMPLES}")
    raise DataError("unknown variable", where=where, field=field, value=text,
                    hint=f"known: {', '.join(MEASURED_VARIABLES)}; aliases: "
                         f"{', '.join(f'{k}={v}' for k, v in ALIASES.items())}")


def _read_table(path: Path, what: str) -> tuple[pd.DataFrame, int]:
    """Read a CSV (all cells as text) or Parquet file; return it and the row number of row 0."""
    if not path.is_file():
        raise DataError(f"{what} file not found", where=path)
    kind = path.suffix.lower()
    if kind not in (".csv", ".parquet"):
        raise DataError(f"{what} must be a .csv or .parquet file", where=path, value=path.suffix)
    try:
        if kind == ".parquet":
            df, row0 = pd.read_parquet(path), 1
        else:
            df, row0 = pd.read_csv(path, dtype=str, keep_default_na=False,
                                   skipinitialspace=True), 2
    except (ValueError, OSError) as exc:  # ParserError, EmptyDataError, ArrowInvalid, decoding
        raise DataError(f"unreadable {kind[1:]} file: {exc}", where=path) from None
    df.columns = [str(c).strip() for c in df.columns]
    return df, row0


def _check_columns(df: pd.DataFrame, required, optional, where, what: str) -> None:
    header = list(df.columns)
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"missing required column(s) {', '.join(map(repr, missing))}; {what} has "
                        f"columns {', '.join(required)}[, {', '.join(optional)}]",
                        where=where, value=header)
    unknown = [c for c in header if c not in required + optional]
    if unknown:
        raise DataError("unknown column(s)", where=where, value=unknown,
                        hint=f"allowed: {', '.join(required + optional)}")


def _text(col: pd.Series) -> np.ndarray:
    """Cells as stripped strings; missing cells (None, NaN, NaT) as ''."""
    s = col.astype(object)
    return s.where(s.notna(), "").map(str).str.strip().to_numpy(dtype=object)


def _py(x: object) -> object:
    """A NumPy scalar as a plain Python value (so that messages read `nan`, not `np.float64(nan)`)."""
    return x.item() if isinstance(x, np.generic) else x


def _finite(col: pd.Series, at: Callable[[int], str], field: str) -> np.ndarray:
    vals = np.array(pd.to_numeric(col, errors="coerce").to_numpy(dtype=float, na_value=np.nan))
    bad = np.flatnonzero(~np.isfinite(vals))
    if bad.size:
        i = bad[0]
        raise DataError("must be a finite number", where=at(i), field=field, value=_py(col.iloc[i]))
    return vals


def _check_times(time: np.ndarray, at: Callable[[int], str]) -> None:
    neg = np.flatnonzero(time < 0)
    if neg.size:
        raise DataError("must be >= 0 h", where=at(neg[0]), field="time_h", value=float(time[neg[0]]))


def _check_bounds(var: str, values: np.ndarray, at: Callable[[int], str], field: str) -> None:
    info = MEASURED_VARIABLES[var]
    bad = np.flatnonzero((values < info.lower) | (values > info.upper))
    if bad.size:
        unit = "" if info.unit == "-" else f" {info.unit}"
        rule = (f"{var} must be >= {info.lower:g}{unit}" if info.upper == _INF
                else f"{var} must lie in [{info.lower:g}, {info.upper:g}]{unit}")
        raise DataError(rule, where=at(bad[0]), field=field, value=float(values[bad[0]]))


def _same_unit(a: str, b: str) -> bool:
    ua, ub = lookup(a), lookup(b)
    return (ua.dimension, ua.scale, ua.offset) == (ub.dimension, ub.scale, ub.offset)


# ---------------------------------------------------------------------------------------------
# Parsing the tables


def _parse_long(df: pd.DataFrame, where: str, row0: int) -> pd.DataFrame:
    """Validate a long table; return `batch, time_h, variable, value, source` (internal units)."""
    _check_columns(df, _LONG_REQUIRED, _LONG_OPTIONAL, where, "a measurements table")
    n = len(df)
    if n == 0:
        raise DataError("the measurements table has no rows", where=where)
    batch = _text(df["batch"])

    def at(i: int) -> str:
        return f"{where} row {row0 + i}" + (f" (batch '{batch[i]}')" if batch[i] else "")

    if (empty := np.flatnonzero(batch == "")).size:
        raise DataError("must not be empty", where=at(empty[0]), field="batch",
                        value=_py(df["batch"].iloc[empty[0]]))
    time = _finite(df["time_h"], at, "time_h")
    _check_times(time, at)
    value = _finite(df["value"], at, "value")
    names = _text(df["variable"])
    unit_cells = _text(df["unit"]) if "unit" in df.columns else np.full(n, "", dtype=object)
    variable = np.empty(n, dtype=object)
    for name in pd.unique(names):
        rows = np.flatnonzero(names == name)
        var, name_unit = parse_variable_name(name, where=at(rows[0]), field="variable")
        variable[rows] = var
        info = MEASURED_VARIABLES[var]
        for cell in pd.unique(unit_cells[rows]):
            idx = rows[unit_cells[rows] == cell]
            unit, field = (cell, "unit") if cell else (name_unit, "variable")
            if cell and name_unit is not None and not _same_unit(cell, name_unit):
                raise DataError(f"the unit column says '{cell}' but the variable name says "
                                f"'{name_unit}'", where=at(idx[0]), field="unit", value=name)
            if unit is None:
                if info.dimension != "dimensionless":
                    raise DataError(f"no unit: give one in the 'unit' column or as a suffix of "
                                    f"the variable name (for example {info.column})",
                                    where=at(idx[0]), field="unit", value=name)
                unit = "-"
            value[idx] = to_internal(value[idx], unit, info.dimension, where=at(idx[0]), field=field)
            _check_bounds(var, value[idx], lambda k: at(idx[k]), "value")
    source = _text(df["source"]) if "source" in df.columns else np.full(n, "", dtype=object)
    source = np.where(source == "", [DEFAULT_SOURCE[v] for v in variable], source)
    if (bad := np.flatnonzero((source != ONLINE) & (source != OFFLINE))).size:
        raise DataError("must be 'online' or 'offline' (or empty)", where=at(bad[0]),
                        field="source", value=str(source[bad[0]]))
    out = pd.DataFrame({"batch": batch, "time_h": time, "variable": variable, "value": value,
                        "source": source})
    dup = np.flatnonzero(out.duplicated(["batch", "variable", "time_h"]).to_numpy())
    if dup.size:
        j = dup[0]
        i = np.flatnonzero((batch == batch[j]) & (variable == variable[j]) & (time == time[j]))[0]
        raise DataError(f"duplicate measurement of {variable[j]} at {time[j]:g} h",
                        where=f"{where} rows {row0 + i} and {row0 + j} (batch '{batch[j]}')",
                        field="time_h", value=float(time[j]))
    return out


def _check_scale(text: object, where: object) -> float | None:
    if text is None or text == "":
        return None
    try:
        scale = float(text)
    except (TypeError, ValueError):
        raise DataError("must be a number (L) or empty", where=where, field="scale_L",
                        value=text) from None
    if not (math.isfinite(scale) and scale > 0):
        raise DataError("must be a finite number > 0 (L)", where=where, field="scale_L", value=text)
    return scale


def _parse_batches(df: pd.DataFrame, where: str, row0: int) -> dict[str, dict]:
    """Validate a batches table; return `{batch: {row, strain, start, scale_L, notes}}`."""
    _check_columns(df, _BATCHES_REQUIRED, _BATCHES_OPTIONAL, where, "a batches table")
    n = len(df)
    cols = {c: _text(df[c]) if c in df.columns else np.full(n, "", dtype=object)
            for c in _BATCHES_REQUIRED + _BATCHES_OPTIONAL}
    meta: dict[str, dict] = {}
    for i in range(n):
        b = cols["batch"][i]
        at = f"{where} row {row0 + i}" + (f" (batch '{b}')" if b else "")
        if not b:
            raise DataError("must not be empty", where=at, field="batch", value=b)
        if b in meta:
            raise DataError("duplicate batch id", where=f"{where} rows {meta[b]['row']} and "
                            f"{row0 + i}", field="batch", value=b)
        if not cols["strain"][i]:
            raise DataError("must not be empty (write 'unknown' if not known)", where=at,
                            field="strain", value="")
        start = cols["start"][i] or None
        if start is not None:
            try:
                start = datetime.fromisoformat(start).isoformat()
            except ValueError:
                raise DataError("must be an ISO 8601 datetime (for example 2024-03-01T08:00) or "
                                "empty", where=at, field="start", value=start) from None
        meta[b] = dict(row=row0 + i, strain=cols["strain"][i], start=start,
                       scale_L=_check_scale(cols["scale_L"][i], at), notes=cols["notes"][i])
    return meta


def _record(batch: str, meta: dict, frame: pd.DataFrame) -> BatchRecord:
    m = (frame[_MEASUREMENT_COLUMNS].sort_values(["variable", "time_h"], kind="stable")
         .reset_index(drop=True).astype({"time_h": float, "value": float}))
    return BatchRecord(batch, meta["strain"], meta["scale_L"], meta["start"], meta["notes"], m)


def _make_set(long: pd.DataFrame, meta: dict[str, dict] | None, m_where: str,
              b_where: str | None, source: str) -> BatchSet:
    ids = list(pd.unique(long["batch"]))
    if meta is None:
        meta = {b: dict(row=None, strain="unknown", start=None, scale_L=None, notes="") for b in ids}
    missing = [b for b in ids if b not in meta]
    if missing:
        raise DataError(f"batch has measurements in {m_where} but is not in the batches table",
                        where=b_where, field="batch", value=missing[0],
                        hint=f"the table lists: {', '.join(meta)}")
    present = set(ids)
    for b, info in meta.items():
        if b not in present:
            raise DataError(f"batch is listed but has no measurements in {m_where}",
                            where=f"{b_where} row {info['row']}", field="batch", value=b)
    groups = dict(tuple(long.groupby("batch", sort=False)))
    return BatchSet({b: _record(b, meta[b], groups[b]) for b in meta}, source)


# ---------------------------------------------------------------------------------------------
# Public loaders and writers


def load_batches(measurements: str | os.PathLike, batches: str | os.PathLike | None = None) -> BatchSet:
    """Load and validate a long measurements table and its batches table.

    Args:
        measurements: long table, `.csv` or `.parquet` (see the module docstring).
        batches: batches table (CSV). `None`: `batches.csv` beside `measurements` if there is
            one, else every batch gets strain `"unknown"` and no scale, start or notes.

    Returns:
        A `BatchSet` in internal units, ordered as the batches table (else as first seen).

    Raises:
        DataError: file not found or unreadable; missing or unknown columns; NaN or non-numeric
            times or values; negative times; unknown variables; values outside the variable's
            physical range; duplicate `(batch, variable, time_h)`; batches in one table but not
            the other; duplicate batch ids; `scale_L` not > 0; `start` not ISO 8601.
        UnitError: unknown unit, or a unit of the wrong dimension for the variable.

    Example:
        >>> data = load_batches("plant/measurements.csv")   # doctest: +SKIP
        >>> t, x = data["B01"].series("biomass")             # doctest: +SKIP
    """
    m_path = Path(measurements)
    raw, row0 = _read_table(m_path, "measurements")
    long = _parse_long(raw, str(m_path), row0)
    if batches is None and (m_path.parent / "batches.csv").is_file():
        batches = m_path.parent / "batches.csv"
    if batches is None:
        return _make_set(long, None, str(m_path), None, str(m_path))
    b_path = Path(batches)
    raw_b, row0_b = _read_table(b_path, "batches table")
    meta = _parse_batches(raw_b, str(b_path), row0_b)
    return _make_set(long, meta, str(m_path), str(b_path), f"{m_path}; {b_path}")


def load_batch_dir(directory: str | os.PathLike) -> BatchSet:
    """Load `measurements.csv` (or `measurements.parquet`) and `batches.csv` from `directory`.

    Raises:
        DataError: the directory, the measurements file or `batches.csv` is missing, both a CSV
            and a Parquet measurements file are present, or anything :func:`load_batches` rejects.

    Example:
        >>> data = load_batch_dir("plant/2024-03")   # doctest: +SKIP
    """
    d = Path(directory)
    if not d.is_dir():
        raise DataError("batch directory not found", where=d)
    found = [p for p in (d / "measurements.csv", d / "measurements.parquet") if p.is_file()]
    if len(found) != 1:
        raise DataError("a batch directory needs exactly one of measurements.csv and "
                        "measurements.parquet", where=d, value=[p.name for p in found])
    if not (d / "batches.csv").is_file():
        raise DataError("batches.csv not found in the batch directory", where=d)
    return load_batches(found[0], d / "batches.csv")


def batch_set_from_frames(long: pd.DataFrame, batches: pd.DataFrame | None = None, *,
                          source: str = "memory") -> BatchSet:
    """Validate in-memory tables exactly as :func:`load_batches` validates files.

    Args:
        long: columns `batch, time_h, variable, value[, unit, source]`.
        batches: columns `batch, strain[, start, scale_L, notes]`, or `None` (strain "unknown").
        source: provenance text; error messages name it as `"<source> (measurements)"`.

    Returns:
        A `BatchSet` in internal units.

    Raises:
        DataError, UnitError: as :func:`load_batches`; rows are numbered from 0 as in `df.iloc`.

    Example:
        >>> long = pd.DataFrame({"batch": ["B1"], "time_h": [0.0], "variable": ["volume"],
        ...                      "value": [60.0], "unit": ["L"]})
        >>> len(batch_set_from_frames(long))
        1
    """
    m_where = f"{source} (measurements)"
    if not isinstance(long, pd.DataFrame):
        raise DataError("must be a pandas DataFrame", where=m_where, value=type(long).__name__)
    data = _parse_long(long.reset_index(drop=True), m_where, 0)
    if batches is None:
        return _make_set(data, None, m_where, None, source)
    b_where = f"{source} (batches)"
    if not isinstance(batches, pd.DataFrame):
        raise DataError("must be a pandas DataFrame", where=b_where, value=type(batches).__name__)
    meta = _parse_batches(batches.reset_index(drop=True), b_where, 0)
    return _make_set(data, meta, m_where, b_where, source)


def read_wide_csv(path: str | os.PathLike, *, batch: str, strain: str = "unknown",
                  scale_L: float | None = None) -> BatchRecord:
    """Read one batch from a wide CSV: `time_h` and one column per variable, unit in the name.

    Empty cells mean "not measured at that time". Sources are the variables' defaults.

    Args:
        path: the CSV, for example with header `time_h,biomass_g_L,dissolved_oxygen_pct,volume_L`.
        batch: the batch id.
        strain: the strain name.
        scale_L: nominal vessel volume, L (> 0), or `None`.

    Returns:
        A `BatchRecord` in internal units.

    Raises:
        DataError: file missing or unreadable, no `time_h` column, `time_h` empty, negative or not
            strictly increasing, two columns for one variable, a column without a unit, a cell
            that is not a finite number, a value outside the variable's physical range.
        UnitError: an unknown unit suffix or one of the wrong dimension.

    Example:
        >>> rec = read_wide_csv("B07.csv", batch="B07", strain="P2")   # doctest: +SKIP
    """
    path = Path(path)
    if not str(batch).strip():
        raise DataError("must not be empty", where=path, field="batch", value=batch)
    scale = _check_scale(scale_L, path)
    df, row0 = _read_table(path, "wide CSV")
    if "time_h" not in df.columns:
        raise DataError("missing required column 'time_h'; a wide CSV has columns time_h and one "
                        "per variable with its unit (for example biomass_g_L)", where=path,
                        value=list(df.columns))

    def at(i: int) -> str:
        return f"{path} row {row0 + i}"

    time = _finite(df["time_h"], at, "time_h")
    _check_times(time, at)
    if (bad := np.flatnonzero(np.diff(time) <= 0)).size:
        i = bad[0] + 1
        raise DataError("must be strictly increasing", where=at(i), field="time_h",
                        value=f"{time[i]:g} after {time[i - 1]:g}")
    seen: dict[str, str] = {}
    pieces = []
    for col in (c for c in df.columns if c != "time_h"):
        var, unit = parse_variable_name(col, where=path, field=col)
        if var in seen:
            raise DataError(f"columns '{seen[var]}' and '{col}' both hold {var}", where=path,
                            field=col)
        seen[var] = col
        info = MEASURED_VARIABLES[var]
        if unit is None and info.dimension != "dimensionless":
            raise DataError(f"no unit in the column name (for example {info.column})",
                            where=path, field=col)
        idx = np.flatnonzero(_text(df[col]) != "")
        vals = _finite(df[col].iloc[idx], lambda k: at(idx[k]), col)
        vals = np.asarray(to_internal(vals, unit or "-", info.dimension, where=path, field=col))
        _check_bounds(var, vals, lambda k: at(idx[k]), col)
        pieces.append(pd.DataFrame({"time_h": time[idx], "variable": var, "value": vals,
                                    "source": DEFAULT_SOURCE[var]}))
    frame = pd.concat(pieces, ignore_index=True) if pieces else None
    if frame is None or frame.empty:
        raise DataError("no measurements in the wide CSV", where=path)
    meta = dict(strain=strain, start=None, scale_L=scale, notes="")
    return _record(str(batch).strip(), meta, frame)


def write_batches(batch_set: BatchSet, directory: str | os.PathLike, *, fmt: str = "csv",
                  provenance: dict | None = None) -> Path:
    """Write a batch set as `measurements.csv` (or `.parquet`), `batches.csv`, `provenance.json`.

    Measurements are written in internal units, with a `unit` column, so that
    :func:`load_batch_dir` reads back the same values exactly. All files are written to temporary
    files first and renamed only when every one succeeded; an error leaves no half-written file.
    A measurements file in the other format is removed, so the directory stays unambiguous.

    Args:
        batch_set: the data.
        directory: output directory (created if needed).
        fmt: `"csv"` or `"parquet"` for the measurements table.
        provenance: JSON-serialisable metadata; written with the key `content_hash` added
            (unless present). `None`: no `provenance.json` is written.

    Returns:
        `directory` as a `Path`.

    Raises:
        DataError: `fmt` is neither `"csv"` nor `"parquet"`.

    Example:
        >>> write_batches(data, "out/clean", provenance={"by": "me"})   # doctest: +SKIP
    """
    if fmt not in ("csv", "parquet"):
        raise DataError("must be 'csv' or 'parquet'", field="fmt", value=fmt)
    d = Path(directory)
    long, table = batch_set.long_table(), batch_set.batches_table()
    with contextlib.ExitStack() as stack:
        m_tmp = stack.enter_context(atomic_path(d / f"measurements.{fmt}"))
        b_tmp = stack.enter_context(atomic_path(d / "batches.csv"))
        if fmt == "csv":
            long.to_csv(m_tmp, index=False)
        else:
            long.to_parquet(m_tmp, index=False)
        table.to_csv(b_tmp, index=False)
        if provenance is not None:
            p_tmp = stack.enter_context(atomic_path(d / "provenance.json"))
            prov = {"content_hash": batch_set.content_hash(), **provenance}
            p_tmp.write_text(json.dumps(prov, indent=2, sort_keys=True, default=str) + "\n")
    other = d / f"measurements.{'parquet' if fmt == 'csv' else 'csv'}"
    other.unlink(missing_ok=True)
    return d


# ---------------------------------------------------------------------------------------------
# Alignment


def _interpolate(ts: np.ndarray, vs: np.ndarray, t: np.ndarray, how: Interpolation,
                 max_gap_h: float | None) -> np.ndarray:
    n = ts.size
    if n == 1:
        return np.where(t == ts[0], vs[0], np.nan)
    i = np.searchsorted(ts, t, side="right") - 1  # ts[i] <= t < ts[i + 1]
    lo = np.clip(i, 0, n - 2)
    hi = lo + 1
    if how is Interpolation.LINEAR:
        y = np.interp(t, ts, vs)
    elif how is Interpolation.PREVIOUS:
        y = vs[np.clip(i, 0, n - 1)]
    else:
        y = np.where(ts[hi] - t < t - ts[lo], vs[hi], vs[lo])
    y = np.where((t >= ts[0]) & (t <= ts[-1]), y, np.nan)
    if max_gap_h is not None:
        in_gap = (ts[hi] - ts[lo] > max_gap_h) & (t != ts[lo]) & (t != ts[hi])
        y = np.where(in_gap, np.nan, y)
    return y


def align(record: BatchRecord, variables: Sequence[str], times, *,
          how: Interpolation | str = Interpolation.LINEAR,
          max_gap_h: float | None = None) -> pd.DataFrame:
    """Sample measured signals at common times.

    A value is NaN before the first or after the last measurement of its variable and, when
    `max_gap_h` is given, strictly inside an interval between two consecutive measurements that
    are more than `max_gap_h` apart (at the measurements themselves the value is kept).

    Args:
        record: the batch.
        variables: variable names (aliases allowed); each becomes a column named as given.
        times: 1-D array of finite times, h.
        how: `Interpolation.LINEAR` (default), `PREVIOUS` (zero-order hold) or `NEAREST`, or their
            string values.
        max_gap_h: longest interval, h, to interpolate across; `None`: no limit.

    Returns:
        DataFrame with column `time_h` and one column per variable (internal units).

    Raises:
        DataError: unknown variable or one not measured in the batch, bad `times`, unknown `how`,
            `max_gap_h` not > 0.

    Example:
        >>> grid = np.arange(0.0, record.end_h, 0.5)                      # doctest: +SKIP
        >>> df = align(record, ["dissolved_oxygen", "aeration"], grid)    # doctest: +SKIP
    """
    where = f"batch '{record.batch}'"
    try:
        how = Interpolation(how)
    except ValueError:
        raise DataError("unknown interpolation", where=where, field="how", value=how,
                        hint=f"one of {', '.join(m.value for m in Interpolation)}") from None
    try:
        t = np.asarray(times, dtype=float)
    except (TypeError, ValueError):
        t = None
    if t is None or t.ndim != 1 or not np.all(np.isfinite(t)):
        got = (times if t is None else f"array of shape {t.shape}" if t.ndim != 1
               else float(t[~np.isfinite(t)][0]))
        raise DataError("must be a 1-D array of finite times (h)", where=where, field="times",
                        value=got)
    if max_gap_h is not None and not max_gap_h > 0:
        raise DataError("must be > 0 h or None", where=where, field="max_gap_h", value=max_gap_h)
    variables = [variables] if isinstance(variables, str) else list(variables)
    out = {"time_h": t}
    for v in variables:
        out[v] = _interpolate(*record.series(v), t, how, max_gap_h)
    return pd.DataFrame(out)


def offline_samples(record: BatchRecord, variables: Sequence[str] | None = None) -> pd.DataFrame:
    """The offline (lab assay) measurements of a batch: columns `time_h, variable, value`.

    Args:
        record: the batch.
        variables: restrict to these variables (aliases allowed); `None`: all.

    Returns:
        DataFrame sorted by `(variable, time_h)`, internal units; possibly empty.

    Raises:
        DataError: an unknown variable name.

    Example:
        >>> offline_samples(record, ["biomass", "product"])   # doctest: +SKIP
    """
    m = record.measurements
    sel = m[m["source"] == OFFLINE]
    if variables is not None:
        variables = [variables] if isinstance(variables, str) else variables
        names = [_known_variable(v, where=f"batch '{record.batch}'") for v in variables]
        sel = sel[sel["variable"].isin(names)]
    return sel[["time_h", "variable", "value"]].reset_index(drop=True)
