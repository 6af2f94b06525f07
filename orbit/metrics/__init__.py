"""Metrics, one module per family, formulas in the docstrings: `weather` (WeatherBench2 RMSE/ACC,
lat-weighted losses), `downscale` (Pearson, SSIM, percentile RMSE), `emulator` (R²)."""
