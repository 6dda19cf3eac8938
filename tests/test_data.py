"""Tests of twin.data: loading, validation, unit conversion, round trips and alignment."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twin.data import (
    DEFAULT_SOURCE,
    MEASURED_VARIABLES,
    BatchSet,
    Interpolation,
    align,
    batch_set_from_frames,
    load_batch_dir,
    load_batches,
    offline_samples,
    parse_variable_name,
    read_wide_csv,
    write_batches,
)
from twin.errors import DataError, UnitError
from twin.state import CONTROL_VARIABLES, STATE_VARIABLES

DATA = Path(__file__).parent / "data"
PLANT = DATA / "plant_small"
ATOL = 1e-12

BATCHES = "batch,strain,start,scale_L,notes\nB1,P2,,100,\n"


def _files(tmp_path, measurements: str, batches: str | None = BATCHES) -> Path:
    m = tmp_path / "m.csv"
    m.write_text(measurements)
    if batches is not None:
        (tmp_path / "batches.csv").write_text(batches)
    return m


def _long(*rows: str, header: str = "batch,time_h,variable,value,unit") -> str:
    return "\n".join((header, *rows)) + "\n"


@pytest.fixture(scope="module")
def plant() -> BatchSet:
    return load_batch_dir(PLANT)


# ---------------------------------------------------------------------------------------------
# Registry and names


def test_registry_covers_state_and_controls():
    assert set(STATE_VARIABLES) | set(CONTROL_VARIABLES) <= set(MEASURED_VARIABLES)
    for name in ("offgas_o2", "oxygen_uptake_rate", "acid_total", "weight", "viscosity", "nitrogen"):
        assert name in MEASURED_VARIABLES
    assert DEFAULT_SOURCE["biomass"] == "offline" and DEFAULT_SOURCE["dissolved_oxygen"] == "online"


@pytest.mark.parametrize("name, expected", [
    ("biomass", ("biomass", None)),
    ("DO_pct", ("dissolved_oxygen", "%")),
    ("dissolved_oxygen_pct", ("dissolved_oxygen", "%")),
    ("biomass_g_L", ("biomass", "g_L")),
    ("volume_m3", ("volume", "m3")),
    ("substrate_feed_L_h", ("substrate_feed", "L_h")),
    ("oxygen_uptake_rate_mmol_L_h", ("oxygen_uptake_rate", "mmol/L/h")),
    ("offgas_co2_mol_pct", ("offgas_co2", "mol%")),
    ("T_K", ("temperature", "K")),
    ("glucose_mg_L", ("substrate", "mg_L")),
])
def test_parse_variable_name(name, expected):
    assert parse_variable_name(name) == expected


# ---------------------------------------------------------------------------------------------
# Loading, units, round trip


def test_load_plant_metadata_and_order(plant):
    assert [r.batch for r in plant] == ["B01", "B02", "B03"]
    b1 = plant["B01"]
    assert (b1.strain, b1.scale_L, b1.start) == ("P2", 100.0, "2024-03-01T08:00:00")
    assert b1.notes == "seed from bank 4, lot 17"
    assert plant["B03"].scale_L is None and plant["B02"].start is None
    assert [r.batch for r in plant.by_strain("P2")] == ["B01", "B02"]
    assert [r.batch for r in plant.select(["B03", "B01"])] == ["B03", "B01"]
    assert list(b1.measurements.columns) == ["time_h", "variable", "value", "source"]
    m = b1.measurements
    assert m.equals(m.sort_values(["variable", "time_h"]).reset_index(drop=True))


def test_unit_conversion_exact(plant):
    b1, b2 = plant["B01"], plant["B02"]
    np.testing.assert_allclose(b1.series("volume")[1], [60.0, 61.0], rtol=0, atol=ATOL)  # m3 -> L
    np.testing.assert_allclose(b1.series("substrate")[1], [15.0, 9.0], rtol=0, atol=ATOL)  # mg/L
    np.testing.assert_allclose(b1.series("temperature")[1], [25.0], rtol=0, atol=ATOL)  # K -> degC
    np.testing.assert_allclose(b1.series("offgas_co2")[1], [0.025], rtol=0, atol=ATOL)  # mol%
    np.testing.assert_allclose(b2.series("weight")[1], [70e3], rtol=0, atol=ATOL)  # kg -> g
    np.testing.assert_allclose(b2.series("volume")[1], [58.0, 59.0], rtol=0, atol=ATOL)


def test_sources_default_and_override(plant):
    m = plant["B03"].measurements
    assert set(m.loc[m.variable == "biomass", "source"]) == {"offline"}
    assert set(m.loc[m.variable == "dissolved_oxygen", "source"]) == {"online"}
    off = offline_samples(plant["B01"])
    assert set(off.variable) == {"biomass", "substrate", "product"}
    assert list(offline_samples(plant["B01"], ["X"]).value) == [0.5, 2.5, 6.0]


def test_units_from_variable_names(tmp_path):
    m = _files(tmp_path, _long("B1,0,volume_m3,0.06", "B1,0,DO_pct,98", "B1,1,biomass_mg_L,500",
                               "B1,1,pH,6.8", header="batch,time_h,variable,value"))
    rec = load_batches(m)["B1"]
    assert rec.variables() == ["biomass", "dissolved_oxygen", "pH", "volume"]
    np.testing.assert_allclose(rec.series("volume")[1], [60.0], rtol=0, atol=ATOL)
    np.testing.assert_allclose(rec.series("biomass")[1], [0.5], rtol=0, atol=ATOL)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_round_trip(plant, tmp_path, fmt):
    write_batches(plant, tmp_path / "out", fmt=fmt, provenance={"origin": "test"})
    back = load_batch_dir(tmp_path / "out")
    a, b = plant.long_table(), back.long_table()
    assert a[["batch", "variable", "unit", "source"]].equals(b[["batch", "variable", "unit", "source"]])
    np.testing.assert_allclose(b[["time_h", "value"]], a[["time_h", "value"]], rtol=0, atol=ATOL)
    assert plant.batches_table().equals(back.batches_table())
    assert back.content_hash() == plant.content_hash()
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov == {"origin": "test", "content_hash": plant.content_hash()}
    other = "parquet" if fmt == "csv" else "csv"
    write_batches(plant, tmp_path / "out", fmt=other)  # switching format leaves one file only
    assert load_batch_dir(tmp_path / "out").content_hash() == plant.content_hash()


def test_write_is_atomic(plant, tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_batches(plant, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []

    def failing_to_csv(self, path, **kw):
        calls.append(path)
        Path(path).write_text("half a fi")
        if len(calls) == 2:
            raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", failing_to_csv)
    with pytest.raises(OSError, match="disk full"):
        write_batches(plant.select(["B01"]), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        write_batches(plant, tmp_path / "fresh")
    assert list((tmp_path / "fresh").iterdir()) == []


def test_batch_set_from_frames_matches_files(plant):
    long = pd.read_csv(PLANT / "measurements.csv", dtype={"batch": str})
    batches = pd.read_csv(PLANT / "batches.csv")
    mem = batch_set_from_frames(long, batches)
    assert mem.content_hash() == plant.content_hash()
    assert mem.source == "memory"
    bad = long.copy()
    bad.loc[3, "value"] = np.nan
    with pytest.raises(DataError, match=r"^memory \(measurements\) row 3 \(batch 'B01'\): "
                                        r"field 'value': must be a finite number \(got nan\)"):
        batch_set_from_frames(bad, batches)


def test_no_batches_table_gives_unknown_strain(tmp_path):
    m = _files(tmp_path, _long("B2,0,biomass,1,g/L", "B1,0,biomass,1,g/L"), batches=None)
    data = load_batches(m)
    assert [r.batch for r in data] == ["B2", "B1"]
    assert {r.strain for r in data} == {"unknown"}


def test_wide_csv_equals_long_form():
    wide = read_wide_csv(DATA / "wide_B07.csv", batch="B07", strain="P2", scale_L=100.0)
    long = load_batches(DATA / "wide_B07_long.csv")["B07"]
    a, b = wide.measurements, long.measurements
    assert a[["variable", "source"]].equals(b[["variable", "source"]])
    np.testing.assert_allclose(a[["time_h", "value"]], b[["time_h", "value"]], rtol=0, atol=ATOL)
    assert (wide.batch, wide.strain, wide.scale_L) == ("B07", "P2", 100.0)


# ---------------------------------------------------------------------------------------------
# Record access and alignment


def _linear_record(tmp_path):
    # DO = 100 - 2 t, measured at 0, 1, 2, 3 and, after a 5 h gap, at 8 and 9 h
    rows = [f"B1,{t:g},DO,{100 - 2 * t:g},%" for t in (0, 1, 2, 3, 8, 9)]
    return load_batches(_files(tmp_path, _long(*rows)))["B1"]


def test_align_linear_exact_nan_outside_and_across_gap(tmp_path):
    rec = _linear_record(tmp_path)
    t = np.array([-0.5, 0.0, 0.25, 1.5, 2.9, 3.0, 5.0, 8.0, 8.5, 9.0, 9.5])
    df = align(rec, ["DO"], t, max_gap_h=2.0)
    expect = 100 - 2 * t
    expect[[0, 6, 10]] = np.nan  # before first sample, inside the 3-8 h gap, after last sample
    np.testing.assert_allclose(df["DO"], expect, rtol=0, atol=ATOL)
    np.testing.assert_array_equal(df["time_h"], t)
    no_limit = align(rec, ["DO"], t)  # without max_gap_h the gap is interpolated
    np.testing.assert_allclose(no_limit["DO"][6], 90.0, rtol=0, atol=ATOL)


def test_align_previous_and_nearest(tmp_path):
    rec = _linear_record(tmp_path)
    t = np.array([0.4, 0.6, 1.0, 5.0])
    prev = align(rec, ["dissolved_oxygen"], t, how=Interpolation.PREVIOUS)
    near = align(rec, ["dissolved_oxygen"], t, how="nearest")
    np.testing.assert_allclose(prev["dissolved_oxygen"], [100, 100, 98, 94], rtol=0, atol=0)
    np.testing.assert_allclose(near["dissolved_oxygen"], [100, 98, 98, 94], rtol=0, atol=0)


def test_until(plant):
    rec = plant["B01"].until(4.0)
    assert rec.end_h == 4.0 and rec.start_h == 0.0
    assert (rec.measurements.time_h <= 4.0).all()
    assert len(rec.measurements) == 12 and len(plant["B01"].measurements) == 16
    assert plant["B01"].end_h == 8.0


def test_series_missing_variable(plant):
    with pytest.raises(DataError, match=r"batch 'B02': field 'pH': no measurements of this variable"):
        plant["B02"].series("pH")
    with pytest.raises(DataError, match=r"field 'variable': unknown variable \(got 'DOO'\)"):
        plant["B02"].series("DOO")


def test_content_hash_stable_and_sensitive(plant, tmp_path):
    assert plant.content_hash() == load_batch_dir(PLANT).content_hash()
    assert plant.select(["B03", "B02", "B01"]).content_hash() == plant.content_hash()
    text = (PLANT / "measurements.csv").read_text()
    (tmp_path / "batches.csv").write_text((PLANT / "batches.csv").read_text())
    (tmp_path / "measurements.csv").write_text(text.replace("B02,6,biomass,3.1", "B02,6,biomass,3.1000001"))
    assert load_batch_dir(tmp_path).content_hash() != plant.content_hash()
    assert plant.select(["B01"]).content_hash() != plant.content_hash()


def test_unknown_batch_and_strain(plant):
    with pytest.raises(DataError, match=r"field 'batch': unknown batch id \(got 'B99'\)"):
        plant["B99"]
    with pytest.raises(DataError, match=r"field 'strain': no batch of this strain \(got 'P9'\)"):
        plant.by_strain("P9")


# ---------------------------------------------------------------------------------------------
# Bad input: one test per rule, checking the message text


@pytest.mark.parametrize("rows, error, match", [
    (("B1,0,biomass,nan,g/L",), DataError,
     r"m\.csv row 2 \(batch 'B1'\): field 'value': must be a finite number \(got 'nan'\)"),
    (("B1,0,biomass,1,g/L", "B1,1,biomass,abc,g/L"), DataError,
     r"m\.csv row 3 \(batch 'B1'\): field 'value': must be a finite number \(got 'abc'\)"),
    (("B1,,biomass,1,g/L",), DataError,
     r"m\.csv row 2 \(batch 'B1'\): field 'time_h': must be a finite number \(got ''\)"),
    (("B1,-1,biomass,1,g/L",), DataError, r"m\.csv row 2 .*field 'time_h': must be >= 0 h \(got -1\.0\)"),
    (("B1,0,biomas,1,g/L",), DataError,
     r"m\.csv row 2 \(batch 'B1'\): field 'variable': unknown variable \(got 'biomas'\)\. known: biomass"),
    (("B1,0,biomass,1,furlong",), UnitError, r"m\.csv row 2 .*field 'unit': unknown unit \(got 'furlong'\)"),
    (("B1,0,biomass,1,L",), UnitError,
     r"m\.csv row 2 .*field 'unit': unit 'L' is a volume, cannot be converted to concentration"),
    (("B1,0,biomass,1,g/L", "B1,1,substrate_feed,-0.5,L/h"), DataError,
     r"m\.csv row 3 \(batch 'B1'\): field 'value': substrate_feed must be >= 0 L/h \(got -0\.5\)"),
    (("B1,0,biomass,-2,g/L",), DataError, r"field 'value': biomass must be >= 0 g/L \(got -2\.0\)"),
    (("B1,0,pH,14,-",), DataError, r"m\.csv row 2 .*field 'value': pH must lie in \[2, 12\] \(got 14\.0\)"),
    (("B1,0,biomass,1,g/L",) * 2, DataError,
     r"m\.csv rows 2 and 3 \(batch 'B1'\): field 'time_h': duplicate measurement of biomass at 0 h"),
    (("B1,0,biomass,1,g/L", "B1,0,X,1,g/L"), DataError, r"rows 2 and 3 .*duplicate measurement of biomass"),
    (("B1,0,biomass,1,",), DataError, r"m\.csv row 2 .*field 'unit': no unit: .*biomass_g_L\) \(got 'biomass'\)"),
    ((",0,biomass,1,g/L",), DataError, r"m\.csv row 2: field 'batch': must not be empty"),
])
def test_bad_measurement_rows(tmp_path, rows, error, match):
    with pytest.raises(error, match=match):
        load_batches(_files(tmp_path, _long(*rows)))


def test_bad_source(tmp_path):
    m = _files(tmp_path, _long("B1,0,biomass,1,g/L,lab", header="batch,time_h,variable,value,unit,source"))
    with pytest.raises(DataError, match=r"row 2 .*field 'source': must be 'online' or 'offline'.*\(got 'lab'\)"):
        load_batches(m)


def test_unit_column_disagrees_with_name(tmp_path):
    with pytest.raises(DataError, match=r"row 2 .*field 'unit': the unit column says 'mg/L' but the "
                                        r"variable name says 'g_L' \(got 'biomass_g_L'\)"):
        load_batches(_files(tmp_path, _long("B1,0,biomass_g_L,1,mg/L")))


def test_unknown_unit_suffix(tmp_path):
    m = _files(tmp_path, _long("B1,0,biomass_gpl,1", header="batch,time_h,variable,value"))
    with pytest.raises(UnitError, match=r"field 'variable': unknown unit suffix 'gpl' after variable "
                                        r"biomass \(got 'biomass_gpl'\)"):
        load_batches(m)


def test_file_not_found(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: measurements file not found"):
        load_batches(tmp_path / "nope.csv")
    with pytest.raises(DataError, match=r"nobatches\.csv: batches table file not found"):
        load_batches(PLANT / "measurements.csv", tmp_path / "nobatches.csv")
    with pytest.raises(DataError, match=r"batch directory not found"):
        load_batch_dir(tmp_path / "nodir")
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match=r"needs exactly one of measurements\.csv and measurements\.parquet"):
        load_batch_dir(tmp_path / "d")


def test_unreadable_csv(tmp_path):
    m = tmp_path / "m.csv"
    m.write_bytes(b"batch,time_h,variable,value,unit\nB1,0,biomass,1,g/L\n\xff\xfe\x00\x81\n")
    with pytest.raises(DataError, match=r"m\.csv: unreadable csv file"):
        load_batches(m)
    (tmp_path / "p.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"p\.parquet: unreadable parquet file"):
        load_batches(tmp_path / "p.parquet")


def test_missing_and_unknown_column(tmp_path):
    m = _files(tmp_path, "batch,time_h,variable,unit\nB1,0,biomass,g/L\n")
    with pytest.raises(DataError, match=r"m\.csv: missing required column\(s\) 'value'; a measurements "
                                        r"table has columns batch, time_h, variable, value\[, unit, source\]"):
        load_batches(m)
    m = _files(tmp_path, "batch,time_h,variable,value,unit,comment\nB1,0,biomass,1,g/L,x\n")
    with pytest.raises(DataError, match=r"m\.csv: unknown column\(s\) \(got \['comment'\]\)"):
        load_batches(m)
    m = _files(tmp_path, _long("B1,0,biomass,1,g/L"), batches="batch,scale_L\nB1,1\n")
    with pytest.raises(DataError, match=r"batches\.csv: missing required column\(s\) 'strain'"):
        load_batches(m)


def test_parquet_row_numbers(tmp_path):
    p = tmp_path / "m.parquet"
    pd.DataFrame({"batch": ["B1", "B1"], "time_h": [0.0, 1.0], "variable": ["biomass"] * 2,
                  "value": [1.0, np.inf], "unit": ["g/L"] * 2}).to_parquet(p)
    with pytest.raises(DataError, match=r"m\.parquet row 2 \(batch 'B1'\): field 'value': must be a finite"):
        load_batches(p)


@pytest.mark.parametrize("batches, match", [
    ("batch,strain\nB1,P2\nB1,P3\n", r"batches\.csv rows 2 and 3: field 'batch': duplicate batch id \(got 'B1'\)"),
    ("batch,strain,scale_L\nB1,P2,-5\n", r"batches\.csv row 2 \(batch 'B1'\): field 'scale_L': must be a "
                                         r"finite number > 0 \(L\) \(got '-5'\)"),
    ("batch,strain,scale_L\nB1,P2,0\n", r"field 'scale_L': must be a finite number > 0 \(L\) \(got '0'\)"),
    ("batch,strain,start\nB1,P2,yesterday\n", r"row 2 \(batch 'B1'\): field 'start': must be an ISO 8601"),
    ("batch,strain\nB1,\n", r"row 2 \(batch 'B1'\): field 'strain': must not be empty"),
    ("batch,strain\nB2,P2\n", r"batches\.csv: field 'batch': batch has measurements in .*m\.csv but is not "
                              r"in the batches table \(got 'B1'\)"),
    ("batch,strain\nB1,P2\nB2,P2\n", r"batches\.csv row 3: field 'batch': batch is listed but has no "
                                     r"measurements in .*m\.csv \(got 'B2'\)"),
])
def test_bad_batches_table(tmp_path, batches, match):
    with pytest.raises(DataError, match=match):
        load_batches(_files(tmp_path, _long("B1,0,biomass,1,g/L"), batches=batches))


@pytest.mark.parametrize("text, error, match", [
    ("time_h,biomass_g_L\n0,1\n2,2\n1,3\n", DataError,
     r"w\.csv row 4: field 'time_h': must be strictly increasing \(got '1 after 2'\)"),
    ("time_h,biomass_g_L\n0,1\n0,2\n", DataError, r"w\.csv row 3: field 'time_h': must be strictly increasing"),
    ("time_h,biomass_g_L\n0,1\n1,nan\n", DataError,
     r"w\.csv row 3: field 'biomass_g_L': must be a finite number \(got 'nan'\)"),
    ("time_h,biomass_g_L\n0,1\n1,-3\n", DataError, r"w\.csv row 3: field 'biomass_g_L': biomass must be >= 0"),
    ("time_h,biomass\n0,1\n", DataError, r"w\.csv: field 'biomass': no unit in the column name"),
    ("time_h,biomass_g_L,X_g_L\n0,1,1\n", DataError, r"columns 'biomass_g_L' and 'X_g_L' both hold biomass"),
    ("time_h,volume_g_L\n0,1\n", UnitError, r"w\.csv: field 'volume_g_L': unit 'g_L' is a concentration"),
    ("time_h,biomasss_g_L\n0,1\n", DataError, r"field 'biomasss_g_L': unknown variable"),
    ("t,biomass_g_L\n0,1\n", DataError, r"w\.csv: missing required column 'time_h'"),
])
def test_bad_wide_csv(tmp_path, text, error, match):
    (tmp_path / "w.csv").write_text(text)
    with pytest.raises(error, match=match):
        read_wide_csv(tmp_path / "w.csv", batch="B1")


def test_bad_align_arguments(tmp_path):
    rec = _linear_record(tmp_path)
    with pytest.raises(DataError, match=r"field 'how': unknown interpolation \(got 'cubic'\)"):
        align(rec, ["DO"], [0.0], how="cubic")
    with pytest.raises(DataError, match=r"field 'times': must be a 1-D array of finite times"):
        align(rec, ["DO"], [0.0, np.nan])
    with pytest.raises(DataError, match=r"field 'max_gap_h': must be > 0 h or None \(got 0\)"):
        align(rec, ["DO"], [0.0], max_gap_h=0)
