"""Planning and benchmarking tools, apart from the engine: `orbit plan` (memory and bytes per axis of
a layout), the analytic communication model, the c10d byte counter and `orbit bench`."""
