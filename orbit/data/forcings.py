"""Known forcings computed from time and grid alone, fed to models as extra input channels.

The sun drives the diurnal and seasonal cycles; a model that is told where the sun is need not
infer it from the fields (GraphCast feeds top-of-atmosphere insolation the same way).
"""
from __future__ import annotations

import numpy as np
import torch

NS_PER_HOUR = 3_600_000_000_000
DAYS_PER_YEAR = 365.25


def cos_solar_zenith(time_ns: torch.Tensor, lat: torch.Tensor, lon: torch.Tensor) -> torch.Tensor:
    """Cosine of the solar zenith angle, clipped at 0 (night): (B, H, W) in [0, 1].

    time_ns: (B,) int64 UTC times; lat: (H,) degrees north; lon: (W,) degrees east.
    Declination 23.44 deg x sin(2 pi (doy - 80) / 365.25); hour angle from UTC and longitude.
    """
    times = np.asarray(time_ns.cpu(), dtype="datetime64[ns]")
    doy = (times - times.astype("datetime64[Y]")) / np.timedelta64(1, "D")
    utc_hours = (times - times.astype("datetime64[D]")) / np.timedelta64(1, "h")
    declination = torch.as_tensor(np.deg2rad(23.44) * np.sin(2 * np.pi * (doy - 80.0) / DAYS_PER_YEAR),
                                  dtype=torch.float32)
    hour_angle = torch.deg2rad(torch.as_tensor(utc_hours, dtype=torch.float32)[:, None] * 15.0
                               + lon.float().cpu()[None, :] - 180.0)  # (B, W)
    phi = torch.deg2rad(lat.float().cpu())
    cos_zenith = (torch.sin(phi)[None, :, None] * torch.sin(declination)[:, None, None]
                  + torch.cos(phi)[None, :, None] * torch.cos(declination)[:, None, None]
                  * torch.cos(hour_angle)[:, None, :])
    return cos_zenith.clamp_min(0.0).to(lat.device)


def lead_valid_time_ns(time_ns: torch.Tensor, lead_hours: torch.Tensor) -> torch.Tensor:
    """Valid time (init + lead) in ns: (B,) int64."""
    return time_ns + (lead_hours.double() * NS_PER_HOUR).round().long()
