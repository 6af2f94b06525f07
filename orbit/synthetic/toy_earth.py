r"""Toy Earth: a cheap, deterministic, physically flavoured stand-in for CMIP6 / ERA5 data.

It exists so that the whole ORBIT pipeline (pretraining on several "climate models", fine-tuning
on a "reanalysis", forecasting skill against persistence and climatology) can be exercised on a
laptop CPU. The fields are not a climate model, but they share what matters to a forecaster:
seasonal and diurnal cycles, travelling weather systems whose future is predictable for a few
days and not beyond, orography and land-sea contrasts, and intermittent precipitation.

Grid and time
    Cell-centred lat ``phi_j = -90 + (j + 1/2) 180/H``, lon ``lambda_i = i 360/W``; steps of
    ``dt = 6 h`` from 00 UTC Jan 1 of the first year, after a 60-day spin-up.

Flow (levels 500 and 850 hPa; ``a`` Earth radius, ``f = 2 Omega sin(phi)``)
    ``psi_500 = psi_jet(phi, t) + Re sum_n C_n(t) E_n(phi, t) e^{i m_n lambda}``,
    ``u = -(1/a) d psi/d phi``, ``v = (1/(a cos phi)) d psi/d lambda`` (non-divergent).
    The jet ``u_jet = U sum_hem (1 + s_hem) exp(-((phi -+ phi_J)/sigma_J)^2) - 3 exp(-(phi/15deg)^2)``
    is stronger in the winter hemisphere (``s_hem = 0.25 * winter index``) and moves 5 deg poleward
    in summer; the waves have zonal wavenumbers ``m_n`` in each hemisphere, Gaussian envelopes
    ``E_n`` (width 15 deg) centred on the jet, and complex amplitudes
    ``C_n = A_n (z_n / 23.5) exp(i (x_n / 16 - theta_n))``, ``A_n = eddy_speed a cos(phi_J) / (m_n sqrt(#m))``,
    where ``(x_n, y_n, z_n)`` is a ring of diffusively coupled Lorenz-63 oscillators
    (sigma = 10, rho = 28, beta = 8/3, coupling kappa on x) run at ``chaos_days`` per Lorenz time
    unit (amplitude vacillation every ~2-3 days, error e-folding in ~4 days), and
    ``d theta_n/dt = m_n (c_steer U_500 - C_R / m_n^2) / (a cos phi_J)`` (Rossby-like drift).
    This fixes the 500 hPa flow. The 850 hPa flow feels the temperature through thermal wind balance:
    ``(u, v)_850 = (u, v)_500 - w(phi) (R_d ln(850/500) / f_e) k x grad T~``, with ``T~`` the layer-mean
    temperature ``(T_500 + T_850)/2`` smoothed over ~2 cells, ``f_e = 2 Omega sign(phi) max(|sin phi|, sin 15deg)``
    and ``w = 1 - exp(-(phi/15deg)^2)`` (no balance at the equator, where 850 follows 500). So the
    850 hPa waves are the 500 hPa ones minus the shear of the advected temperature field, not a copy.

Temperature ``T_l`` (prognostic at 500/850 hPa)
    ``dT/dt = -u . grad T + (T_eq - T) / tau_l + nu lap T + 0.3 (L_v / c_p) condensation``,
    advected semi-Lagrangian (cubic interpolation at departure points, across the poles), with
    ``T_eq,850 = 256 + 37 cos^2 phi + A_s (0.5 + land~) sin(phi) sin(delta_lag)/sin(eps) + bias + 0.15 D``
    and ``T_eq,500 = 237 + 31 cos^2 phi + 0.6 * (the same seasonal term) + bias + 0.03 D``
    (``land~`` a smoothed land mask: continents have larger seasons);
    ``delta_lag`` is the solar declination 30 days earlier (thermal inertia), ``D`` the diurnal
    heating below.

Humidity ``q_l`` and precipitation
    Advected like ``T``; evaporation moistens ``q_850`` towards ``r q_sat(T_850)`` (``r = rh_sea``
    over sea, ``rh_land`` over land) in ``tau_e``; ``q_500`` relaxes to ``0.3 q_850`` in 2 days.
    Where ``q > q_sat(T) (1 - lift)`` with
    ``lift = min(k_a max(-dt u . grad T, 0) + k_o max(u_850 . grad h, 0) + k_c max(D, 0) + L_itcz, 0.4)``
    (synoptic ascent in warm advection, upslope flow over orography ``h``, afternoon convection,
    and a Gaussian ITCZ 10 deg wide that follows the lagged sun) the excess condenses, warms ``T``
    by ``0.3 L_v/c_p`` per unit (the rest is radiated) and rains out:
    ``tp = sum_l excess_l * dp_l / g`` with ``dp = 350, 300 hPa`` (mm per 6 h, >= 0, intermittent).
    ``q_sat = 0.622 e_s / (p - 0.378 e_s)``, ``e_s = 611.2 exp(17.67 (T - 273.15)/(T - 29.65))`` Pa.

Surface layer (prognostic, with memories of its own)
    Soil moisture ``W`` in [0, 1] over land: ``dW/dt = tp / 50 mm - W / tau_W`` (``tau_W = soil_days``),
    ``W = 1`` over sea. The 2 m temperature relaxes towards a surface equilibrium,
    ``dt2m/dt = (T_s,eq - t2m) / tau_s``, ``tau_s = surface_days_land`` or ``surface_days_sea`` (the ocean
    mixed layer remembers for days), with
    ``T_s,eq = T_850 + 6.5e-3 (1460 - h) + A_ls land sin(phi) sin(delta_lag)/sin(eps) + (1 + 0.8 (1 - W)) D
    + A_dry land (0.5 - W)`` (dry soil: larger diurnal range and warmer), and rain cools it by
    ``evap_cooling`` K per mm over land. ``D = A_d (max(cos zeta', 0) - <max(cos zeta, 0)>_day)``
    with ``A_d = diurnal_land`` or ``diurnal_sea``, ``zeta'`` the solar zenith angle 2.5 h earlier
    (afternoon maximum) and ``<.>_day`` its daily mean.
    The 10 m wind relaxes in ``tau_bl = bl_days`` towards the turned, slowed 850 hPa wind plus a
    thermal breeze down the surface temperature gradient:
    ``d(u10, v10)/dt = (k R(a) (u_850, v_850) - c_b grad t2m - (u10, v10)) / tau_bl``, with
    ``k = 0.75`` over sea, ``0.5 exp(-h / 3000 m)`` over land, a cross-isobaric turning
    ``a = 20 deg sign(phi)`` and ``c_b = breeze`` m2 s-1 K-1 (sea breezes by day, land breezes by night).

Diagnostics
    ``z_500 = 5.75e4 + f psi_500`` (linear balance; m2 s-2);
    ``z_850 = z_500 - R_d ln(850/500) (T_500 + T_850)/2`` (hypsometric, hence thermal wind).

Geography: fixed idealised continents (super-ellipses) and mountain ranges (Gaussian ridges),
shared by every source except for a per-source orography scale (models resolve mountains
differently). Every source has its own parameters and its own random stream: the seed only
sets the initial state of the oscillators.
"""
from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage, special

from orbit.data import store, writer

A_EARTH = 6.371e6  # m
OMEGA = 7.292e-5  # s-1
G = 9.80665  # m s-2
R_D = 287.05  # J kg-1 K-1
CP = 1004.6  # J kg-1 K-1
L_V = 2.5e6  # J kg-1
LAPSE = 6.5e-3  # K m-1
H850 = 1460.0  # m, mean height of the 850 hPa surface
Z500_EQUATOR = 5.75e4  # m2 s-2, 500 hPa geopotential where f psi = 0
OBLIQUITY = np.deg2rad(23.44)
DT = 6 * 3600.0  # s, one output step
LEVELS = (500, 850)
LAYER_MASS = {500: 3.5e4 / G, 850: 3.0e4 / G}  # kg m-2 of air each level stands for
SPINUP_STEPS = 240  # 60 days
LATENT_EFFICIENCY = 0.3  # share of latent heat kept by the level (the rest is radiated away)
VARIABLES_2D = ("t2m", "u10", "v10", "tp")
VARIABLES_3D = ("z", "t", "u", "v", "q")
ALL_VARIABLES = VARIABLES_2D + VARIABLES_3D


@dataclass(frozen=True)
class SourceSpec:
    """Physical parameters of one toy source (a "model" or the "reanalysis")."""

    name: str
    kind: str  # "model" | "reanalysis"
    title: str
    variables: tuple[str, ...] = ALL_VARIABLES
    jet_speed: float = 30.0  # m s-1, 500 hPa jet core
    jet_lat: float = 42.0  # deg, annual-mean jet latitude
    wavenumbers: tuple[int, ...] = (3, 4, 5, 6, 7)
    eddy_speed: float = 14.0  # m s-1, rms wave wind scale at 500 hPa
    chaos_days: float = 4.0  # days per Lorenz-63 time unit
    coupling: float = 0.5  # Lorenz ring coupling
    steering: float = 0.5  # wave drift as a fraction of the jet speed
    rossby: float = 150.0  # m s-1, retrogression C_R (long waves drift west)
    diffusion: float = 0.04  # index-space Laplacian coefficient per step
    relax_days: tuple[float, float] = (8.0, 4.0)  # radiative time scale at (500, 850) hPa
    seasonal_amp: float = 10.0  # K
    land_season: float = 6.0  # K, extra summer/winter contrast of t2m over land
    diurnal_land: float = 12.0  # K
    diurnal_sea: float = 1.5  # K
    bias: float = 0.0  # K, warm/cold bias
    rh_sea: float = 0.8
    rh_land: float = 0.5
    evap_days: float = 1.0
    lift_warm: float = 0.1  # per K (6 h)-1 of warm advection
    lift_convective: float = 0.03  # per K of afternoon heating D > 0
    lift_itcz: float = 0.25  # deep-convection lift at the centre of the ITCZ
    lift_orog: float = 5.0  # per m s-1 of upslope wind
    orography_scale: float = 1.0
    surface_days_land: float = 0.5  # t2m memory over land
    surface_days_sea: float = 4.0  # t2m memory over sea (mixed layer)
    soil_days: float = 15.0  # soil-moisture memory
    dry_warming: float = 6.0  # K, A_dry: warm anomaly of dry against half-wet soil
    evap_cooling: float = 0.3  # K per mm of rain over land
    bl_days: float = 0.5  # 10 m wind relaxation time
    breeze: float = 3.0e5  # m2 s-1 K-1, thermal breeze per surface temperature gradient
    institution: str = "ORBIT toy Earth"


SOURCES: dict[str, SourceSpec] = {}


def register_source(spec: SourceSpec) -> SourceSpec:
    """Add a source to :data:`SOURCES` (names must be unique, variables known)."""
    if spec.name in SOURCES:
        raise ValueError(f"source {spec.name!r} is already registered")
    unknown = set(spec.variables) - set(ALL_VARIABLES)
    if unknown:
        raise ValueError(f"source {spec.name!r} has unknown variables {sorted(unknown)}; valid: {ALL_VARIABLES}")
    SOURCES[spec.name] = spec
    return spec


register_source(SourceSpec("cmip_a", "model", "Toy CMIP6-like model A (baseline physics)"))
register_source(SourceSpec(
    "cmip_b", "model", "Toy CMIP6-like model B (strong jet, warm bias, no humidity output)",
    variables=("t2m", "u10", "v10", "z", "t", "u", "v"), jet_speed=36.0, jet_lat=45.0,
    eddy_speed=16.0, chaos_days=3.5, diffusion=0.025, seasonal_amp=12.0, bias=2.0,
    diurnal_land=10.0, orography_scale=1.2))
register_source(SourceSpec(
    "cmip_c", "model", "Toy CMIP6-like model C (weak, diffusive flow, cold bias, no 10 m winds)",
    variables=("t2m", "tp", "z", "t", "u", "v", "q"), jet_speed=25.0, jet_lat=38.0,
    wavenumbers=(2, 3, 4, 5, 6), eddy_speed=12.0, chaos_days=5.0, diffusion=0.07,
    relax_days=(10.0, 5.0), seasonal_amp=8.0, bias=-1.5, diurnal_land=14.0, diurnal_sea=1.0,
    rh_sea=0.85, orography_scale=0.8))
register_source(SourceSpec(
    "reanalysis", "reanalysis", "Toy reanalysis (the 'observed' toy Earth)",
    jet_speed=32.0, jet_lat=43.0, wavenumbers=(3, 4, 5, 6, 7, 8), eddy_speed=15.0,
    chaos_days=3.8, diffusion=0.035, seasonal_amp=11.0, diurnal_land=11.0, rh_sea=0.78,
    institution="ORBIT toy Earth (reanalysis)"))


# --------------------------------------------------------------------------- validation
def check_grid(grid: tuple[int, int]) -> tuple[int, int]:
    """Grids must be patchable by the model: H even in [16, 256] and W == 2H."""
    if len(grid) != 2:
        raise ValueError(f"grid must be (H, W), got {grid!r}")
    h, w = (int(n) for n in grid)
    if h % 2 or not 16 <= h <= 256 or w != 2 * h:
        raise ValueError(f"grid must be (H, 2H) with H even in [16, 256], e.g. (32, 64) or (128, 256); got {grid}")
    return h, w


def check_source(source: str) -> SourceSpec:
    if source not in SOURCES:
        raise ValueError(f"unknown toy source {source!r}; valid: {sorted(SOURCES)}")
    return SOURCES[source]


def check_years(years: tuple[int, int]) -> tuple[int, int]:
    start, end = (int(y) for y in years)
    if start > end or not 1678 <= start <= 2261 or not 1678 <= end <= 2261:
        raise ValueError(f"years must be (start, end) with start <= end within 1678-2261 "
                         f"(datetime64[ns] range); got {years}")
    return start, end


# --------------------------------------------------------------------------- geography
# Idealised continents: (lon centre, lat centre, lon half-width, lat half-width), degrees.
CONTINENTS = (
    (85.0, 50.0, 65.0, 18.0),  # Eurasia
    (20.0, 5.0, 22.0, 28.0),  # Africa
    (260.0, 47.0, 32.0, 20.0),  # North America
    (295.0, -17.0, 16.0, 26.0),  # South America
    (135.0, -25.0, 18.0, 11.0),  # Australia
    (0.0, -90.0, 360.0, 20.0),  # Antarctica (a polar cap)
)
# Mountain ranges: (lon1, lat1, lon2, lat2, height m, half-width deg).
RIDGES = (
    (245.0, 32.0, 232.0, 60.0, 2500.0, 4.0),  # Rockies
    (290.0, -48.0, 284.0, 5.0, 3500.0, 3.0),  # Andes
    (72.0, 33.0, 100.0, 32.0, 4500.0, 6.0),  # Himalaya / Tibet
    (5.0, 46.0, 16.0, 46.0, 1800.0, 2.5),  # Alps
    (34.0, -10.0, 40.0, 12.0, 1500.0, 5.0),  # East African highlands
    (0.0, -90.0, 359.0, -90.0, 2800.0, 14.0),  # Antarctic plateau
)


def _wrap180(dlon: np.ndarray) -> np.ndarray:
    return (dlon + 180.0) % 360.0 - 180.0


def _land_fraction(lat2d: np.ndarray, lon2d: np.ndarray) -> np.ndarray:
    """Smooth land indicator in (0, 1]; the mask is ``> exp(-1)`` (inside any super-ellipse)."""
    best = np.zeros_like(lat2d)
    for lon_c, lat_c, half_lon, half_lat in CONTINENTS:
        s = (_wrap180(lon2d - lon_c) / half_lon) ** 4 + ((lat2d - lat_c) / half_lat) ** 4
        best = np.maximum(best, np.exp(-s))
    return best


def _ridge_height(lat2d: np.ndarray, lon2d: np.ndarray, min_width: float) -> np.ndarray:
    """Sum of Gaussian ridges along segments (flat metric with cos(lat) scaling of lon)."""
    total = np.zeros_like(lat2d)
    for lon1, lat1, lon2, lat2, height, half_width in RIDGES:
        coslat = np.cos(np.deg2rad(0.5 * (lat1 + lat2)))
        seg = np.array([_wrap180(lon2 - lon1) * coslat, lat2 - lat1])
        px, py = _wrap180(lon2d - lon1) * np.cos(np.deg2rad(lat2d)), lat2d - lat1
        along = np.clip((px * seg[0] + py * seg[1]) / max(seg @ seg, 1e-9), 0.0, 1.0)
        dist2 = (px - along * seg[0]) ** 2 + (py - along * seg[1]) ** 2
        width = max(half_width, min_width)
        total += height * np.exp(-dist2 / width**2)
    return total


def make_statics(grid: tuple[int, int], orography_scale: float = 1.0) -> xr.Dataset:
    """orography (m), land_sea_mask (1 land / 0 sea), latitude_2d (deg) on the grid: (lat, lon)."""
    lat, lon = grid_coords(grid)
    lat2d, lon2d = np.meshgrid(lat, lon, indexing="ij")
    land = _land_fraction(lat2d, lon2d)
    mask = (land > np.exp(-1.0)).astype(np.float64)
    spacing = 180.0 / grid[0]
    orography = orography_scale * mask * (300.0 + _ridge_height(lat2d, lon2d, min_width=spacing))
    data = {"orography": orography, "land_sea_mask": mask, "latitude_2d": lat2d}
    return xr.Dataset(
        {name: (("lat", "lon"), value.astype(np.float32), dict(store.STATIC_ATTRS[name]))
         for name, value in data.items()},
        coords={"lat": lat.astype(np.float32), "lon": lon.astype(np.float32)},
    )


def grid_coords(grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Cell-centre latitudes (ascending) and longitudes in [0, 360), degrees, float64."""
    h, w = grid
    return -90.0 + (np.arange(h) + 0.5) * 180.0 / h, np.arange(w) * 360.0 / w


# --------------------------------------------------------------------------- sun
def _declination(doy: float) -> float:
    return OBLIQUITY * np.sin(2 * np.pi * (doy - 80.0) / 365.25)


def _cos_zenith(phi: np.ndarray, lam: np.ndarray, decl: float, utc_hours: float) -> np.ndarray:
    """Cosine of the solar zenith angle: (H, W) from phi (H, 1), lam (1, W) in radians."""
    hour_angle = 2 * np.pi * utc_hours / 24.0 + lam - np.pi
    return np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.cos(hour_angle)


def _daily_mean_cos_zenith(phi: np.ndarray, decl: float) -> np.ndarray:
    """Daily mean of max(cos zeta, 0) (normalized daily insolation): (H, 1)."""
    h0 = np.arccos(np.clip(-np.tan(phi) * np.tan(decl), -1.0, 1.0))
    return (h0 * np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.sin(h0)) / np.pi


def q_sat(temperature: np.ndarray, pressure_pa: float) -> np.ndarray:
    """Saturation specific humidity (kg kg-1) over water (Bolton's e_s)."""
    e_s = 611.2 * np.exp(17.67 * (temperature - 273.15) / (temperature - 29.65))
    return 0.622 * e_s / (pressure_pa - 0.378 * e_s)


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Cubic Lagrange weights for nodes -1, 0, 1, 2 at fractional offset t in [0, 1): (4, ...)."""
    return np.stack([-t * (t - 1) * (t - 2) / 6, (t + 1) * (t - 1) * (t - 2) / 2,
                     -(t + 1) * t * (t - 2) / 2, (t + 1) * t * (t - 1) / 6])


# --------------------------------------------------------------------------- the model
@dataclass
class ToyState:
    """Prognostic state. lorenz: (3, N) oscillators; theta: (N,) wave phases; fields (H, W)."""

    lorenz: np.ndarray
    theta: np.ndarray
    t500: np.ndarray
    t850: np.ndarray
    q500: np.ndarray
    q850: np.ndarray
    t2m: np.ndarray
    soil: np.ndarray
    u10: np.ndarray
    v10: np.ndarray


class Forcing(NamedTuple):
    """Calendar-driven forcing of one step (see ToyEarth.forcing)."""

    lagged_declination: float  # rad, declination a month earlier
    winter_index: float  # +1 in northern winter, -1 in northern summer
    diurnal: np.ndarray  # (H, W) K, sun-following heating anomaly D
    jet_lat: np.ndarray  # (2,) rad, |jet latitude| north / south
    u_jet: np.ndarray  # (H, 1) m s-1 at 500 hPa
    psi_jet: np.ndarray  # (H, 1) m2 s-1


class ToyEarth:
    """Steps the toy Earth of one source on one grid by 6 h. Deterministic given the state."""

    def __init__(self, spec: SourceSpec, grid: tuple[int, int]):
        self.spec = spec
        self.grid = check_grid(grid)
        h, w = self.grid
        lat, lon = grid_coords(self.grid)
        self.phi = np.deg2rad(lat)[:, None]  # (H, 1)
        self.lam = np.deg2rad(lon)[None, :]  # (1, W)
        self.coslat = np.cos(self.phi)
        self.f = 2 * OMEGA * np.sin(self.phi)
        self.statics = statics = make_statics(self.grid, spec.orography_scale)
        self.orography = statics["orography"].values.astype(np.float64)
        self.land = statics["land_sea_mask"].values.astype(np.float64)
        self.land_smooth = ndimage.gaussian_filter(self.land, sigma=h / 16, mode=["nearest", "wrap"])
        # waves: one set per hemisphere
        m = np.array(spec.wavenumbers * 2, dtype=np.float64)
        self.m = m
        self.hemisphere = np.repeat([1.0, -1.0], len(spec.wavenumbers))
        wave_count = len(spec.wavenumbers)
        self.wave_amp = spec.eddy_speed * A_EARTH * np.cos(np.deg2rad(spec.jet_lat)) / (m * np.sqrt(wave_count))
        self.cos_m = np.cos(m[:, None] * self.lam)  # (N, W)
        self.sin_m = np.sin(m[:, None] * self.lam)
        # surface wind: friction factor and cross-isobaric turning
        self.wind_factor = np.where(self.land > 0.5, 0.5 * np.exp(-self.orography / 3000.0), 0.75)
        turn = np.deg2rad(20.0) * np.sign(self.phi)
        self.turn_cos, self.turn_sin = np.cos(turn), np.sin(turn)
        # orography gradient (m per m) for upslope flow
        dx = A_EARTH * self.coslat * (2 * np.pi / w)
        dy = A_EARTH * np.pi / h
        self.dhdx = (np.roll(self.orography, -1, 1) - np.roll(self.orography, 1, 1)) / (2 * dx)
        self.dhdy = np.gradient(self.orography, axis=0) / dy
        self.dx, self.dy = dx, dy
        self.rh_target = np.where(self.land > 0.5, spec.rh_land, spec.rh_sea)
        self.diurnal_amp = np.where(self.land > 0.5, spec.diurnal_land, spec.diurnal_sea)
        surface_days = np.where(self.land > 0.5, spec.surface_days_land, spec.surface_days_sea)
        self.surface_relax = 1.0 - np.exp(-DT / (surface_days * 86400.0))
        # thermal wind: R_d ln(850/500) / f_e, tapered to nothing at the equator
        f_e = 2 * OMEGA * np.where(self.phi >= 0, 1.0, -1.0) * np.maximum(np.abs(np.sin(self.phi)),
                                                                            np.sin(np.deg2rad(15.0)))
        self.thermal_wind = (R_D * np.log(850.0 / 500.0) / f_e
                             * (1.0 - np.exp(-((self.phi / np.deg2rad(15.0)) ** 2))))

    # ---- initial state
    def initial_state(self, rng: np.random.Generator, time: np.datetime64) -> ToyState:
        """Radiative equilibrium, moist air and random oscillators (a spin-up should follow)."""
        n = len(self.m)
        lorenz = rng.normal(0.0, 6.0, size=(3, n)) + np.array([[0.0], [0.0], [25.0]])
        theta = rng.uniform(0.0, 2 * np.pi, size=n)
        t500, t850 = self._t_eq(self.forcing(time))
        q850 = 0.7 * q_sat(t850, 85000.0)
        t2m = t850 + LAPSE * (H850 - self.orography)
        soil = np.where(self.land > 0.5, 0.5, 1.0)
        calm = np.zeros_like(t850)
        return ToyState(lorenz, theta, t500.copy(), t850.copy(), 0.3 * q850, q850, t2m, soil, calm, calm.copy())

    # ---- forcing
    def forcing(self, time: np.datetime64) -> Forcing:
        """Everything the sun and the calendar impose at ``time``."""
        t = np.datetime64(time, "ns")
        doy = float((t - t.astype("datetime64[Y]")) / np.timedelta64(1, "D"))
        hour = float((t - t.astype("datetime64[D]")) / np.timedelta64(1, "h"))
        decl = _declination(doy)
        lagged = _declination(doy - 30.0)  # thermal inertia: the seasons lag the sun by a month
        winter_n = -np.sin(lagged) / np.sin(OBLIQUITY)
        cz = np.maximum(_cos_zenith(self.phi, self.lam, decl, hour - 2.5), 0.0)
        diurnal = self.diurnal_amp * (cz - _daily_mean_cos_zenith(self.phi, decl))
        jet_lat, u_jet, psi_jet = self._jets(winter_n)
        return Forcing(lagged, winter_n, diurnal, jet_lat, u_jet, psi_jet)

    def _t_eq(self, forcing: Forcing) -> np.ndarray:
        """Radiative-equilibrium temperature at (500, 850) hPa: (2, H, W)."""
        s = self.spec
        seasonal = (s.seasonal_amp * (0.5 + self.land_smooth) * np.sin(self.phi) * np.sin(forcing.lagged_declination)
                    / np.sin(OBLIQUITY))
        cos2 = self.coslat**2
        t850 = 256.0 + 37.0 * cos2 + seasonal + s.bias + 0.15 * forcing.diurnal
        t500 = 237.0 + 31.0 * cos2 + 0.6 * seasonal + s.bias + 0.03 * forcing.diurnal
        return np.stack([t500, t850])

    def _itcz(self, forcing: Forcing) -> np.ndarray:
        """Convective lift of the ITCZ, following the sun a month late: (H, 1)."""
        centre = 0.3 * forcing.lagged_declination
        return self.spec.lift_itcz * np.exp(-(((self.phi - centre) / np.deg2rad(10.0)) ** 2))

    def _jets(self, winter_n: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Jet latitude per hemisphere (rad, (2,)), 500 hPa zonal wind u_jet (H, 1) and psi_jet (H, 1)."""
        s = self.spec
        lat_n = np.deg2rad(s.jet_lat - 5.0 * winter_n)  # poleward in summer
        lat_s = np.deg2rad(s.jet_lat + 5.0 * winter_n)
        sig = np.deg2rad(10.0)
        parts = [(s.jet_speed * (1 + 0.25 * winter_n), lat_n, sig), (s.jet_speed * (1 - 0.25 * winter_n), -lat_s, sig),
                 (-3.0, 0.0, np.deg2rad(15.0))]
        u = sum(amp * np.exp(-(((self.phi - c) / width) ** 2)) for amp, c, width in parts)
        # psi = -a * integral_0^phi u dphi' (Gaussians integrate to erf)
        psi = -A_EARTH * sum(amp * width * np.sqrt(np.pi) / 2
                             * (special.erf((self.phi - c) / width) - special.erf(-c / width))
                             for amp, c, width in parts)
        return np.array([lat_n, lat_s]), u, psi

    # ---- flow
    def _lorenz_step(self, xyz: np.ndarray) -> np.ndarray:
        """Advance the coupled Lorenz-63 ring (3, N) by 6 h with RK4 (steps <= 0.05 time units)."""
        span = DT / 86400.0 / self.spec.chaos_days
        n_sub = int(np.ceil(span / 0.05))
        h = span / n_sub
        kappa = self.spec.coupling
        left, right = np.roll(np.arange(xyz.shape[1]), 1), np.roll(np.arange(xyz.shape[1]), -1)

        def rhs(s):
            x, y, z = s
            return np.array([10.0 * (y - x) + kappa * (x[left] + x[right] - 2 * x),
                             x * (28.0 - z) - y, x * y - 8.0 / 3.0 * z])

        for _ in range(n_sub):
            k1 = rhs(xyz)
            k2 = rhs(xyz + 0.5 * h * k1)
            k3 = rhs(xyz + 0.5 * h * k2)
            k4 = rhs(xyz + h * k3)
            xyz = xyz + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        return xyz

    def _flow(self, lorenz: np.ndarray, theta: np.ndarray, forcing: Forcing,
              layer_temp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """500 hPa streamfunction (H, W) and u, v at (500, 850) hPa, each (2, H, W); the 850 hPa
        wind is the 500 hPa one minus the thermal wind of ``layer_temp`` (H, W)."""
        x, _, z = lorenz
        centre = np.where(self.hemisphere > 0, forcing.jet_lat[0], -forcing.jet_lat[1])  # (N,)
        amp = self.wave_amp * z / 23.5 * np.exp(1j * (0.5 * x / 8.0 - theta))
        levels = amp[None]  # (1, N): the 500 hPa waves
        sig_w = np.deg2rad(15.0)
        offset = self.phi[:, 0][None, :] - centre[:, None]  # (N, H)
        env = np.exp(-((offset / sig_w) ** 2))
        denv = -2 * offset / sig_w**2 * env
        # Re(C e^{i m lam}) = Re C cos(m lam) - Im C sin(m lam): one matmul per quantity
        coef = np.concatenate([levels.real, -levels.imag], axis=1)[:, None, :]  # (2, 1, 2N)
        basis = np.concatenate([self.cos_m, self.sin_m])  # (2N, W)
        dbasis = np.concatenate([-self.sin_m, self.cos_m]) * np.tile(self.m, 2)[:, None]  # d/d lam
        env2, denv2 = np.tile(env.T, 2), np.tile(denv.T, 2)  # (H, 2N)
        psi = ((coef * env2) @ basis)[0]
        u500 = forcing.u_jet - ((coef * denv2) @ basis)[0] / A_EARTH
        v500 = ((coef * env2) @ dbasis)[0] / (A_EARTH * self.coslat)
        smooth = ndimage.gaussian_filter(layer_temp, sigma=self.grid[0] / 16, mode=["nearest", "wrap"])
        dtdx, dtdy = self._gradient(smooth)
        u850 = u500 + self.thermal_wind * dtdy  # u_T = -(R ln(p1/p2) / f) dT/dy, subtracted
        v850 = v500 - self.thermal_wind * dtdx
        return psi + forcing.psi_jet, np.stack([u500, u850]), np.stack([v500, v850])

    def _advance_phase(self, theta: np.ndarray, forcing: Forcing) -> np.ndarray:
        """Rossby-like drift of the wave phases: steering by the jet minus retrogression."""
        lat = np.where(self.hemisphere > 0, forcing.jet_lat[0], forcing.jet_lat[1])
        core = self.spec.jet_speed * (1 + 0.25 * forcing.winter_index * self.hemisphere)
        speed = self.spec.steering * core - self.spec.rossby / self.m**2
        return theta + DT * self.m * speed / (A_EARTH * np.cos(lat))

    # ---- transport
    def _advect(self, tracers: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Semi-Lagrangian advection of tracers (L, K, H, W) by winds (L, H, W) over one step.

        Departure points go back along the arrival wind; paths over a pole re-enter at lon + 180.
        Bicubic Lagrange interpolation on arrays padded with pole-crossing rows (lon wraps).
        """
        levels, k, h, w = tracers.shape
        pad = 2
        phi_d = self.phi - v * DT / A_EARTH
        lam_d = self.lam - u * DT / (A_EARTH * np.maximum(self.coslat, 0.02))
        over = np.abs(phi_d) > np.pi / 2
        phi_d = np.where(over, np.sign(phi_d) * np.pi - phi_d, phi_d)
        lam_d = np.where(over, lam_d + np.pi, lam_d)
        j = (np.rad2deg(phi_d) + 90.0) * h / 180.0 - 0.5 + pad  # row in the padded array
        i = np.rad2deg(lam_d) * w / 360.0
        j_base, i_base = np.floor(j), np.floor(i)
        wj, wi = _cubic_weights(j - j_base), _cubic_weights(i - i_base)  # (4, L, H, W)
        offsets = np.arange(-1, 3)[:, None, None, None]
        rows = (j_base.astype(np.int64)[None] + offsets) * w  # flat offsets of the 4 stencil rows
        cols = np.mod(i_base.astype(np.int64)[None] + offsets, w)

        south = np.roll(tracers[..., pad - 1::-1, :], w // 2, axis=-1)
        north = np.roll(tracers[..., : h - pad - 1 : -1, :], w // 2, axis=-1)
        padded = np.concatenate([south, tracers, north], axis=-2).reshape(levels, k, -1)
        out = np.zeros_like(tracers)
        for level in range(levels):
            for a in range(4):  # cubic in lon on each stencil row, then cubic in lat
                row = sum(wi[b, level] * np.take(padded[level], rows[a, level] + cols[b, level], axis=1)
                          for b in range(4))
                out[level] += wj[a, level] * row
        return out

    @staticmethod
    def _laplacian(x: np.ndarray) -> np.ndarray:
        """Index-space 5-point Laplacian, periodic in lon, zero-flux at the poles: (..., H, W)."""
        up = np.concatenate([x[..., 1:, :], x[..., -1:, :]], axis=-2)
        down = np.concatenate([x[..., :1, :], x[..., :-1, :]], axis=-2)
        return up + down + np.roll(x, 1, -1) + np.roll(x, -1, -1) - 4 * x

    def _gradient(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(d/dx, d/dy) in m-1 of x (..., H, W) by centred differences."""
        ddx = (np.roll(x, -1, -1) - np.roll(x, 1, -1)) / (2 * self.dx)
        ddy = np.gradient(x, axis=-2) / self.dy
        return ddx, ddy

    # ---- one step
    def step(self, state: ToyState, time: np.datetime64) -> tuple[ToyState, dict[str, np.ndarray]]:
        """Advance from ``time - 6 h`` to ``time``; return the new state and the output fields
        (2-D: (H, W); 3-D: (2, H, W) for levels (500, 850))."""
        s = self.spec
        forcing = self.forcing(time)
        lorenz = self._lorenz_step(state.lorenz)
        theta = self._advance_phase(state.theta, forcing)
        psi, u, v = self._flow(lorenz, theta, forcing, 0.5 * (state.t500 + state.t850))

        # transport: temperature and humidity at each level by that level's wind
        tracers = np.stack([np.stack([state.t500, state.q500]), np.stack([state.t850, state.q850])])
        (t500, q500), (t850, q850) = self._advect(tracers, u, v)
        temp = np.stack([t500, t850])
        hum = np.stack([q500, q850])

        # radiation, diffusion
        relax = 1.0 - np.exp(-DT / (np.array(s.relax_days)[:, None, None] * 86400.0))
        temp = temp + relax * (self._t_eq(forcing) - temp) + s.diffusion * self._laplacian(temp)
        hum = np.maximum(hum + s.diffusion * self._laplacian(hum), 0.0)

        # moisture sources: evaporation into 850, vertical mixing to 500
        qs = np.stack([q_sat(temp[0], 50000.0), q_sat(temp[1], 85000.0)])
        evap = 1.0 - np.exp(-DT / (s.evap_days * 86400.0))
        hum[1] += evap * np.maximum(self.rh_target * qs[1] - hum[1], 0.0)
        mixing = 1.0 - np.exp(-DT / (2.0 * 86400.0))
        hum[0] += mixing * (0.3 * hum[1] - hum[0])

        # condensation where supersaturated, more readily in ascent (warm advection, upslope,
        # afternoon convection)
        diurnal = forcing.diurnal
        ddx, ddy = self._gradient(temp)
        warm_adv = -DT * (u * ddx + v * ddy)  # K per step
        upslope = u[1] * self.dhdx + v[1] * self.dhdy  # m s-1
        lift = np.minimum(s.lift_warm * np.maximum(warm_adv, 0.0) + s.lift_orog * np.maximum(upslope, 0.0)
                          + s.lift_convective * np.maximum(diurnal, 0.0) + self._itcz(forcing), 0.4)
        excess = np.maximum(hum - qs * (1.0 - lift), 0.0)
        hum = hum - excess
        temp = temp + LATENT_EFFICIENCY * L_V / CP * excess
        tp = (excess[0] * LAYER_MASS[500] + excess[1] * LAYER_MASS[850])  # kg m-2 == mm

        t2m, soil, u10, v10 = self._surface(state, forcing, temp[1], u[1], v[1], tp)
        new = ToyState(lorenz, theta, temp[0], temp[1], hum[0], hum[1], t2m, soil, u10, v10)

        # diagnostics: linear balance at 500 hPa, hypsometric thickness down to 850 hPa
        thickness = R_D * np.log(850.0 / 500.0)
        z500 = Z500_EQUATOR + self.f * psi
        z850 = z500 - thickness * 0.5 * (temp[0] + temp[1])
        out = {"t2m": t2m, "u10": u10, "v10": v10, "tp": tp, "z": np.stack([z500, z850]),
               "t": temp, "u": u, "v": v, "q": hum}
        return new, out

    def _surface(self, state: ToyState, forcing: Forcing, t850: np.ndarray, u850: np.ndarray,
                 v850: np.ndarray, tp: np.ndarray) -> tuple[np.ndarray, ...]:
        """One step of the surface layer: (t2m, soil moisture, u10, v10), each (H, W)."""
        s = self.spec
        land = self.land > 0.5
        soil_decay = np.exp(-DT / (s.soil_days * 86400.0))
        soil = np.where(land, np.clip(state.soil * soil_decay + tp / 50.0, 0.0, 1.0), 1.0)
        season = s.land_season * self.land * np.sin(self.phi) * np.sin(forcing.lagged_declination) / np.sin(OBLIQUITY)
        t_eq = (t850 + LAPSE * (H850 - self.orography) + season + (1.0 + 0.8 * (1.0 - soil)) * forcing.diurnal
                + s.dry_warming * self.land * (0.5 - soil))
        t2m = state.t2m + self.surface_relax * (t_eq - state.t2m) - s.evap_cooling * self.land * tp
        ddx, ddy = self._gradient(t2m)
        target_u = self.wind_factor * (self.turn_cos * u850 - self.turn_sin * v850) - s.breeze * ddx
        target_v = self.wind_factor * (self.turn_sin * u850 + self.turn_cos * v850) - s.breeze * ddy
        relax = 1.0 - np.exp(-DT / (s.bl_days * 86400.0))
        u10 = state.u10 + relax * (target_u - state.u10)
        v10 = state.v10 + relax * (target_v - state.v10)
        return t2m, soil, u10, v10


# --------------------------------------------------------------------------- public API
def _rng(source: str, seed: int) -> np.random.Generator:
    """A random stream per (source, seed): sources never share initial states."""
    return np.random.default_rng([int(seed), zlib.crc32(source.encode())])


def time_axis(years: tuple[int, int]) -> np.ndarray:
    """6-hourly datetime64[ns] from 00 UTC Jan 1 of years[0] to 18 UTC Dec 31 of years[1]."""
    start, end = years
    return pd.date_range(f"{start}-01-01", f"{end}-12-31T18:00", freq="6h").values


def _spun_up(earth: ToyEarth, source: str, seed: int, first: np.datetime64) -> ToyState:
    """The state at ``first - 6 h`` after the spin-up from the seeded initial state."""
    state = earth.initial_state(_rng(source, seed), first - SPINUP_STEPS * np.timedelta64(6, "h"))
    for k in range(SPINUP_STEPS - 1, 0, -1):
        state, _ = earth.step(state, first - k * np.timedelta64(6, "h"))
    return state


def _fields(spec: SourceSpec, grid: tuple[int, int], times: np.ndarray, arrays: dict[str, np.ndarray]) -> xr.Dataset:
    """The store layout around ``arrays`` (name -> (T, [2,] H, W) float32)."""
    lat, lon = grid_coords(grid)
    data_vars = {}
    for name in spec.variables:
        dims = ("time", "level", "lat", "lon") if name in VARIABLES_3D else ("time", "lat", "lon")
        data_vars[name] = (dims, arrays[name], dict(store.VARIABLE_ATTRS[name]))
    coords = {"time": times, "lat": lat.astype(np.float32), "lon": lon.astype(np.float32)}
    if any(name in VARIABLES_3D for name in spec.variables):
        coords["level"] = np.array(LEVELS, dtype=np.int32)
    return xr.Dataset(data_vars, coords=coords)


def _step_shapes(spec: SourceSpec, grid: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    return {name: ((2,) if name in VARIABLES_3D else ()) + tuple(grid) for name in spec.variables}


def generate(source: str, years: tuple[int, int], grid: tuple[int, int] = (32, 64),
             seed: int = 0) -> tuple[xr.Dataset, xr.Dataset]:
    """Run the toy Earth for ``source`` over the calendar ``years`` (inclusive), all in memory.

    Returns ``(fields, statics)`` in the store layout: fields float32 ``(time, lat, lon)`` or
    ``(time, level, lat, lon)`` with only the source's variables; statics ``(lat, lon)``.
    Memory: about 56 bytes x H x W per step for all 14 channels (1.7 GB for 10 years at 32x64);
    :func:`generate_blocks` and :func:`synthesize` hold one block at a time instead.
    """
    spec = check_source(source)
    times = time_axis(check_years(years))
    blocks = list(generate_blocks(source, years, grid, seed, block_steps=times.size))
    return blocks[0][0], make_statics(check_grid(grid), spec.orography_scale)


def generate_blocks(source: str, years: tuple[int, int], grid: tuple[int, int] = (32, 64), seed: int = 0, *,
                    block_steps: int, start: int = 0,
                    state: ToyState | None = None) -> Iterator[tuple[xr.Dataset, ToyState]]:
    """The fields of :func:`generate`, ``block_steps`` time steps at a time, each with the state after it.

    To resume, pass the time index ``start`` where a block ended and the state yielded with that
    block; ``state=None`` starts from the spin-up (``start`` must then be 0). Bitwise identical to
    one :func:`generate` call.
    """
    spec = check_source(source)
    grid = check_grid(grid)
    times = time_axis(check_years(years))
    if block_steps < 1 or not 0 <= start < times.size or (state is None and start != 0):
        raise ValueError(f"need block_steps >= 1 and 0 <= start < {times.size} with a state unless start == 0; "
                         f"got block_steps={block_steps}, start={start}, state={'given' if state else None}")
    earth = ToyEarth(spec, grid)
    if state is None:
        state = _spun_up(earth, source, seed, times[0])
    shapes = _step_shapes(spec, grid)
    for first in range(start, times.size, block_steps):
        block_times = times[first:first + block_steps]
        arrays = {name: np.empty((block_times.size, *shape), np.float32) for name, shape in shapes.items()}
        for n, time in enumerate(block_times):
            state, out = earth.step(state, time)
            for name, array in arrays.items():
                array[n] = out[name]
        yield _fields(spec, grid, block_times, arrays), state


def synthesize(root: str | Path, sources: list[str] | None = None, years: tuple[int, int] = (1990, 1999),
               grid: tuple[int, int] = (32, 64), seed: int = 0, train_years: tuple[int, int] | None = None,
               overwrite: bool = False, progress: bool = False) -> dict[str, Path]:
    """Generate each toy source and write ``<root>/<source>.zarr``; returns {source: path}.

    ``train_years`` (default: all but the last two years, or all years if fewer than 3) sets the
    years used for normalization statistics and climatology. Written block by block with
    :func:`orbit.data.writer.write_blocks` (memory: one block, whatever the length; an interrupted run
    resumes when called again with the same arguments); ``progress`` shows a progress bar.
    """
    sources = list(SOURCES) if sources is None else list(sources)
    for source in sources:
        check_source(source)
    grid = check_grid(grid)
    years = check_years(years)
    if train_years is None:
        train_years = (years[0], years[1] - 2) if years[1] - years[0] >= 2 else years
    if not years[0] <= train_years[0] <= train_years[1] <= years[1]:
        raise ValueError(f"train_years {train_years} must lie within years {years}")
    root = Path(root)
    paths = {source: root / f"{source}.zarr" for source in sources}
    existing = [str(p) for p in paths.values() if p.exists()]
    resuming = any(p.with_name(f"{p.name}.partial").exists() for p in paths.values())
    if existing and not overwrite and not resuming:
        raise FileExistsError(f"stores already exist: {existing}; pass overwrite=True to replace them")
    times = time_axis(years)
    for source, path in paths.items():
        if path.exists() and not overwrite:  # an interrupted run resumed: its finished stores are kept
            continue
        spec = SOURCES[source]
        template = _fields(spec, grid, times, {name: np.broadcast_to(np.float32(0), (times.size, *shape))
                                               for name, shape in _step_shapes(spec, grid).items()})
        block_steps = writer.steps_per_block(template)

        def produce(start: int, saved: dict, source: str = source) -> Iterator[tuple[xr.Dataset, dict]]:
            state = ToyState(**saved) if saved else None
            for block, after in generate_blocks(source, years, grid, seed, block_steps=block_steps, start=start,
                                                state=state):
                yield block, dataclasses.asdict(after)

        attrs = {"title": spec.title, "institution": spec.institution,
                 "history": f"orbit.synthetic.toy_earth.generate(source={source!r}, years={years}, grid={grid}, seed={seed})"}
        writer.write_blocks(template, produce, path, source=source, kind=spec.kind, train_years=train_years,
                            statics=make_statics(grid, spec.orography_scale), attrs=attrs, overwrite=overwrite,
                            progress=progress)
    return paths


# --------------------------------------------------------------------------- sanity figures
def baseline_rmse(fields: xr.Dataset, train_years: tuple[int, int], eval_years: tuple[int, int],
                  lags: tuple[int, ...] = (1, 4, 12)) -> pd.DataFrame:
    """Latitude-weighted RMSE of the trivial forecasts per channel on ``eval_years``.

    Columns: ``climatology`` (harmonic fit on ``train_years``, as stored by write_store) and
    ``persistence_<6*lag>h`` (x(t + lag) forecast by x(t)). A good toy Earth has persistence
    errors growing to the climatology error within a few days, so neither is a good forecast.
    """
    times = fields["time"].values
    years = times.astype("datetime64[Y]").astype(int) + 1970
    train = np.flatnonzero((years >= train_years[0]) & (years <= train_years[1]))
    evaluate = np.flatnonzero((years >= eval_years[0]) & (years <= eval_years[1]))
    if len(train) < len(store.HARMONICS) or len(evaluate) <= max(lags):
        raise ValueError(f"need >= {len(store.HARMONICS)} training steps and > {max(lags)} evaluation steps; "
                         f"got {len(train)} and {len(evaluate)} for {train_years} / {eval_years}")
    train, evaluate = slice(train[0], train[-1] + 1), slice(evaluate[0], evaluate[-1] + 1)  # fast on lazy stores
    weight = np.cos(np.deg2rad(fields["lat"].values.astype(np.float64)))[:, None]
    weight = weight / weight.mean()

    def rmse(error: np.ndarray) -> float:  # error: (T, H, W)
        return float(np.sqrt((error.astype(np.float64) ** 2 * weight).mean()))

    rows = {}
    for channel in store.channel_names(fields):
        x_train = store.channel_array(fields, [channel], train)[:, 0]
        x_eval = store.channel_array(fields, [channel], evaluate)[:, 0]
        coef = store.fit_harmonics(times[train], x_train.reshape(len(x_train), -1))
        clim = (store.design_matrix(times[evaluate]) @ coef).reshape(x_eval.shape)
        row = {"climatology": rmse(x_eval - clim)}
        row.update({f"persistence_{6 * lag}h": rmse(x_eval[lag:] - x_eval[:-lag]) for lag in lags})
        rows[channel] = row
    return pd.DataFrame.from_dict(rows, orient="index")
