"""Where the IndPenSim scenario's CO2 constants come from: the demo history's off-gas.

For every history batch and every offline biomass assay from `--from-h` to `--to-h`, the CO2
evolution rate is read from the recorded off-gas CO2 through the twin's own quasi-steady gas
balance (`FermentationModel.carbon_dioxide` inverted: CER = (y - y_in) n_gas 1000 / V, with the
online values averaged over the assay hour +-1 h), and divided by the assay's biomass: the specific
CO2 evolution q_CO2 (mmol/g/h) of the scenario. The dissolved CO2 the twin's gas-liquid model
gives for the recorded off-gas, head pressure and volume is then compared with the scenario's
critical CO2 (IndPenSim's X_crit_CO2, Goldrick et al. 2015, converted to mmol/L).

    python benchmarks/co2_history.py [--from-h 12 --to-h 150]

Ends with `name: value` headline lines.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from twin.reactor import MOLAR_VOLUME_NORMAL, co2_solubility  # noqa: E402
from twin.scenario import load_scenario  # noqa: E402
from twin.state import Controls, ReactorState  # noqa: E402

SCENARIO = ROOT / "scenarios" / "penicillin_indpensim.toml"
HISTORY = ROOT / "twin" / "demo_data" / "measurements.parquet"


def plant_critical_co2(temperature_K: float = 298.0) -> tuple[float, float]:
    """IndPenSim's CO2 threshold (pensimpy 1.2.5: CO2_inhib = 0.5 (1 + tanh(7570 - 1000 c)), with
    c = p_lm y[%] / H(T), H = exp(11.25 - 395.9 / (T - 175.9)) / 4400) as a CO2 partial pressure
    at the log-mean head pressure (bar), and as the twin's dissolved CO2 (mmol/L)."""
    h = math.exp(11.25 - 395.9 / (temperature_K - 175.9)) / 4400.0
    p = 7.57 * h / 100.0
    return p, float(co2_solubility(temperature_K - 273.15)) * p


def main(argv=None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from-h", type=float, default=12.0)
    ap.add_argument("--to-h", type=float, default=150.0)
    args = ap.parse_args(argv)
    sc = load_scenario(SCENARIO)
    model = sc.model
    y_in = float(model.vessel.inlet_co2)
    long = pd.read_parquet(HISTORY)
    rows, online = [], []
    for batch, g in long.groupby("batch"):
        wide = g.pivot_table(index="time_h", columns="variable", values="value")
        n_gas = wide["aeration"] / MOLAR_VOLUME_NORMAL  # mol/h
        cer = (wide["offgas_co2"] - y_in) * n_gas * 1000.0 / wide["volume"]
        # the twin's dissolved CO2 for the recorded off-gas, pressure and volume, hour by hour
        zero = np.zeros(len(wide))
        y = ReactorState(biomass=zero, substrate=zero, product=zero, volume=wide["volume"].to_numpy(),
                         dissolved_oxygen=zero, precursor=zero, oil=zero, ledger=None)
        u = Controls(**{**{name: zero for name in Controls.__dataclass_fields__},
                        "back_pressure": wide["back_pressure"].to_numpy()})
        p_lm = np.asarray(model.head_pressure(y, u))
        dco2 = np.asarray(co2_solubility(wide["temperature"].to_numpy())) * p_lm * wide["offgas_co2"]
        online.append(pd.DataFrame({"batch": batch, "time_h": wide.index, "dco2": dco2.to_numpy()}))
        x = wide["biomass"].dropna()
        for t in x.index[(x.index >= args.from_h) & (x.index <= args.to_h)]:
            rows.append((batch, t, x[t], cer.loc[t - 1:t + 1].mean()))
    d = pd.DataFrame(rows, columns=["batch", "time_h", "biomass", "cer"])
    d["q_co2"] = d["cer"] / d["biomass"]
    per_batch = d.groupby("batch")["q_co2"].median()
    by_time = d.groupby("time_h")["q_co2"].median()
    on = pd.concat(online)
    p_crit, c_crit = plant_critical_co2()
    print(f"q_CO2 (mmol/g/h) by assay time, median over {d['batch'].nunique()} batches:")
    for t, q in by_time.items():
        print(f"  {t:6.1f} h  {q:.3f}")
    print("per batch: " + ", ".join(f"{b} {q:.3f}" for b, q in per_batch.items()))
    above = on[on["dco2"] > c_crit]
    print(f"critical CO2: p_lm {p_crit:.4f} bar = {c_crit:.3f} mmol/L; history hours above it: "
          f"{len(above)} ({', '.join(f'{b} {t:g} h' for b, t in zip(above['batch'], above['time_h']))})")
    figures = {
        "q_co2_median_mmol_g_h": float(d["q_co2"].median()),
        "q_co2_batch_sd_mmol_g_h": float(per_batch.std()),
        "q_co2_p05_mmol_g_h": float(d["q_co2"].quantile(0.05)),
        "q_co2_p95_mmol_g_h": float(d["q_co2"].quantile(0.95)),
        "co2_crit_mmol_L": c_crit,
        "co2_crit_bar": p_crit,
        "history_dco2_max_mmol_L": float(on["dco2"].max()),
        "history_dco2_p99_mmol_L": float(on["dco2"].quantile(0.99)),
        "history_hours_above_crit": float(len(above)),
    }
    for k, v in figures.items():
        print(f"{k}: {v:.4g}")
    return figures


if __name__ == "__main__":
    main()
