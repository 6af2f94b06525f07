r"""Synthetic many-basin data with known truth: a stochastic weather generator drives a conceptual
rainfall-runoff model (HBV-like: Bergstroem 1976; Seibert & Vis 2012) whose parameters are functions
of each basin's static attributes, so that a network can learn them and transfer to unseen basins.

Static attributes (drawn per basin, seeded): latitude (deg), elevation (km), aridity (PET/P),
soil depth (m), forest fraction, slope (m/km), permeability (0..1), area (km^2).

Weather (per basin, daily):
- temperature ``T = T0 - 6.5 elev - 0.6 (lat - 35) - A cos(2 pi (doy - 15) / 365) + a_t + w (year - y0)``
  with seasonal amplitude ``A = 4 + 0.4 (lat - 25)``, an AR(1) anomaly ``a_t = 0.8 a_{t-1} + 2.5 e_t``
  and the documented warming trend ``w`` = `warming` degC per year (default 0.03, i.e. 0.9 degC over
  30 years) from the first year y0; ``tmax = T + dtr/2``, ``tmin = T - dtr/2``, dtr = 10 - 3 wet.
- precipitation: a two-state Markov chain (P(wet|dry) = 0.25 (1 + 0.4 s), P(wet|wet) = 0.6, with a
  seasonal term s of random phase), wet-day amounts Gamma(shape 0.8) with mean set by the aridity;
- shortwave radiation ``srad`` (W/m^2) seasonal and lower on wet days; vapour pressure ``vp`` (Pa)
  from tmin (Tetens), both noisy; ``noise``: an i.i.d. N(0, 1) driver the model never uses (a
  control for attributions: its true importance is zero).

Conceptual model (daily, all in mm):
- snow: a rain/snow split linear over ``T`` in [-1, 1] degC; melt ``= min(SWE, ddf max(T, 0))`` with
  the degree-day factor ``ddf = 2.5 + 1.5 (1 - forest)`` mm/degC/day;
- soil: water input w = rain + melt; recharge ``r = w (SM/FC)^beta``, ``SM += w - r``;
  evapotranspiration ``ET = PET min(SM / (0.7 FC), 1)``, PET from Hargreaves' radiation formula
  ``PET = 0.0135 (T + 17.8) Rs``, Rs = srad 0.0864 / 2.45 mm/day; soil above FC spills to r.
  ``FC = 80 + 200 soil_depth``, ``beta = 1.5 + 2 aridity``;
- reservoirs: a fraction ``phi = 0.3 + 0.5 (1 - permeability)`` of r fills the fast store
  (``Q1 = k1 S1``, ``k1 = 0.15 + 0.02 slope``), the rest the slow store (``Q2 = k2 S2``,
  ``k2 = 0.01 + 0.04 (1 - permeability)``);
- routing: a triangular unit hydrograph of ``maxbas = 1 + area / 1000`` days; observations carry
  5% multiplicative log-normal noise.
The generator stores the true melt and soil moisture (`BasinSet.truth`) for checks of explanations.
"""
from __future__ import annotations

import numpy as np

from .basins import BasinSet

DRIVERS = ("prcp", "tmax", "tmin", "srad", "vp", "noise")
STATIC = ("lat", "elev", "aridity", "soil_depth", "forest", "slope", "permeability", "area")


def draw_static(n_basins: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 8) attributes in the order of STATIC."""
    return np.stack([
        rng.uniform(28, 50, n_basins),           # lat
        rng.gamma(2.0, 0.4, n_basins),           # elev, km
        rng.uniform(0.3, 2.0, n_basins),         # aridity
        rng.uniform(0.3, 2.0, n_basins),         # soil depth, m
        rng.uniform(0.0, 1.0, n_basins),         # forest fraction
        rng.uniform(1.0, 20.0, n_basins),        # slope, m/km
        rng.uniform(0.0, 1.0, n_basins),         # permeability
        rng.uniform(50.0, 3000.0, n_basins),     # area, km^2
    ], axis=1)


def weather(static: np.ndarray, dates: np.ndarray, warming: float, rng: np.random.Generator) -> np.ndarray:
    """(N, T, 6) drivers in the order of DRIVERS (see the module docstring)."""
    n, t = len(static), len(dates)
    lat, elev, aridity = static[:, 0:1], static[:, 1:2], static[:, 2:3]
    doy = (dates - dates.astype("datetime64[Y]")).astype(int)[None, :]
    years = dates.astype("datetime64[Y]").astype(int)[None, :] + 1970
    season = np.cos(2 * np.pi * (doy - 15) / 365.25)
    anomaly = np.zeros((n, t))
    eps = rng.normal(size=(n, t))
    for i in range(1, t):
        anomaly[:, i] = 0.8 * anomaly[:, i - 1] + 2.5 * eps[:, i]
    temp = 18.0 - 6.5 * elev - 0.6 * (lat - 35) - (4 + 0.4 * (lat - 25)) * season + anomaly \
        + warming * (years - years.min())
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    p_wet_dry = 0.25 * (1 + 0.4 * np.cos(2 * np.pi * doy / 365.25 + phase))
    u = rng.uniform(size=(n, t))
    wet = np.zeros((n, t), dtype=bool)
    for i in range(1, t):
        wet[:, i] = u[:, i] < np.where(wet[:, i - 1], 0.6, p_wet_dry[:, i])
    mean_wet = 4.0 + 8.0 / aridity  # mm per wet day: humid basins rain harder
    prcp = wet * rng.gamma(0.8, 1.0, (n, t)) * mean_wet / 0.8
    dtr = 10.0 - 3.0 * wet + rng.normal(0, 1, (n, t))
    tmax, tmin = temp + dtr / 2, temp - dtr / 2
    srad = np.clip((200 - 3.0 * (lat - 35)) - (80 + 1.5 * (lat - 25)) * season - 60 * wet
                   + rng.normal(0, 15, (n, t)), 20, None)
    vp = 611.2 * np.exp(17.67 * tmin / (tmin + 243.5)) * rng.uniform(0.85, 1.0, (n, t))
    return np.stack([prcp, tmax, tmin, srad, vp, rng.normal(size=(n, t))], axis=-1)


def attribute_parameters(static: np.ndarray) -> dict[str, np.ndarray]:
    """The generator's model parameters (N,) from the static attributes (see the module docstring);
    the snow threshold ``tt`` = 0 degC and the ET limit ``lp`` = 0.7 are the same for every basin."""
    soil_depth, forest, slope, perm, area = (static[:, i] for i in (3, 4, 5, 6, 7))
    return {"fc": 80 + 200 * soil_depth, "beta": 1.5 + 2 * static[:, 2], "lp": np.full(len(static), 0.7),
            "ddf": 2.5 + 1.5 * (1 - forest), "tt": np.zeros(len(static)), "phi": 0.3 + 0.5 * (1 - perm),
            "k1": 0.15 + 0.02 * slope, "k2": 0.01 + 0.04 * (1 - perm), "maxbas": 1 + area / 1000}


def model_forcing(drivers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precipitation, mean temperature, Hargreaves PET) (N, T) from drivers (N, T, >=4) whose first
    four columns are prcp (mm/day), tmax, tmin (degC) and srad (W/m^2)."""
    prcp, tmax, tmin, srad = (drivers[..., i] for i in range(4))
    temp = (tmax + tmin) / 2
    return prcp, temp, np.clip(0.0135 * (temp + 17.8) * srad * 0.0864 / 2.45, 0, None)


def simulate(params: dict[str, np.ndarray], prcp: np.ndarray, temp: np.ndarray, pet: np.ndarray
             ) -> dict[str, np.ndarray]:
    """{"flow", "melt", "soil"} (M, T) of the conceptual model (module docstring) for M parameter sets
    `params` {name: (M,)} (names as `attribute_parameters`); forcing (M, T), or (1, T) shared by all
    M sets, which is how a calibration runs a whole population of candidates in one pass."""
    fc, beta, lp, ddf, tt, phi, k1, k2 = (params[k] for k in ("fc", "beta", "lp", "ddf", "tt", "phi", "k1", "k2"))
    n, t = len(fc), prcp.shape[1]
    snow_frac = np.clip((tt[:, None] + 1 - temp) / 2, 0, 1)
    swe, sm, s1, s2 = np.zeros(n), 0.5 * fc, np.zeros(n), 50.0 * np.ones(n)
    q, melt_out, sm_out = np.zeros((n, t)), np.zeros((n, t)), np.zeros((n, t))
    for i in range(t):
        swe = swe + snow_frac[:, i] * prcp[:, i]
        melt = np.minimum(swe, ddf * np.maximum(temp[:, i], 0))
        swe = swe - melt
        w = (1 - snow_frac[:, i]) * prcp[:, i] + melt
        r = w * (sm / fc) ** beta
        sm = sm + w - r
        sm = sm - np.minimum(pet[:, i] * np.minimum(sm / (lp * fc), 1), sm)
        spill = np.maximum(sm - fc, 0)
        sm, r = sm - spill, r + spill
        s1, s2 = s1 + phi * r, s2 + (1 - phi) * r
        q1, q2 = k1 * s1, k2 * s2
        s1, s2 = s1 - q1, s2 - q2
        q[:, i], melt_out[:, i], sm_out[:, i] = q1 + q2, melt, sm / fc
    return {"flow": route(q, params["maxbas"]), "melt": melt_out, "soil": sm_out}


def runoff(static: np.ndarray, drivers: np.ndarray) -> dict[str, np.ndarray]:
    """{"flow", "melt", "soil"} (N, T) of the conceptual model with the attribute-derived parameters, no noise."""
    return simulate(attribute_parameters(static), *model_forcing(drivers))


def route(q: np.ndarray, maxbas: np.ndarray) -> np.ndarray:
    """Convolve each basin's series with a triangular unit hydrograph of base `maxbas` days (HBV)."""
    out = np.zeros_like(q)
    for b in range(len(q)):
        m = int(np.ceil(maxbas[b]))
        x = np.arange(m + 1)
        weights = np.maximum(1 - np.abs(x + 0.5 - maxbas[b] / 2) / (maxbas[b] / 2), 0)
        weights /= weights.sum()
        out[b] = np.convolve(q[b], weights)[:q.shape[1]]
    return out


def synthetic_basins(n_basins: int, first_year: int, last_year: int, warming: float = 0.03, seed: int = 0,
                     spinup_days: int = 365) -> BasinSet:
    """`n_basins` basins from Jan 1 of `first_year` to Dec 31 of `last_year` (after an unrecorded
    spin-up of the stores); gauge ids 's0000', 's0001', ..."""
    if n_basins < 1 or last_year < first_year:
        raise ValueError(f"need n_basins >= 1 and last_year >= first_year; got {n_basins}, {first_year}..{last_year}")
    rng = np.random.default_rng([seed, 13])
    static = draw_static(n_basins, rng)
    dates = np.arange(np.datetime64(f"{first_year}-01-01") - np.timedelta64(spinup_days, "D"),
                      np.datetime64(f"{last_year + 1}-01-01"), dtype="datetime64[D]")
    drivers = weather(static, dates, warming, rng)
    states = runoff(static, drivers)
    flow = states["flow"] * np.exp(rng.normal(0, 0.05, states["flow"].shape))
    keep = slice(spinup_days, None)
    return BasinSet([f"s{i:04d}" for i in range(n_basins)], dates[keep], drivers[:, keep].astype(np.float32),
                    list(DRIVERS), flow[:, keep], static.astype(np.float32), list(STATIC),
                    {k: v[:, keep] for k, v in states.items() if k != "flow"})
