# The two commands of the README: `make demo` (main job) and `make test` (test suite).
# Both install what they need into .venv first (idempotent: a stamp file skips it next time).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.orbit-installed
DATA   ?= data/toy
DEMO_SOURCES := cmip_a cmip_b cmip_c

.PHONY: setup demo data finetune-data test bench

setup: $(STAMP)

$(STAMP): setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned in the same command so pip never resolves another multi-GB build.
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1 -e ".[dev,uq,land,hydro]"
	touch $(STAMP)

$(DATA)/cmip_c.zarr: $(STAMP)
	$(PY) -m orbit data synth --root $(DATA) --sources $(DEMO_SOURCES) --years 1990 1993 \
		--train-years 1990 1991 --grid 32x64 --seed 0 --overwrite

data: $(DATA)/cmip_c.zarr

# A fixed run directory, so fine-tuning can start from runs/pretrain-tiny/checkpoints/step_00000800;
# running it again resumes (and only re-evaluates once the run is complete).
demo: data
	OMP_NUM_THREADS=1 $(PY) -m orbit pretrain --config configs/pretrain/tiny.yaml --run-dir runs/pretrain-tiny \
		--resume auto data.root=$(DATA)

# Data of the three fine-tuning tasks' tiny configs (configs/finetune/*/tiny.yaml); ~10 min on 2 cores.
finetune-data: $(STAMP)
	$(PY) -m orbit data synth --root $(DATA) --sources reanalysis --years 1990 1993 --train-years 1990 1991 \
		--grid 32x64 --seed 0 --overwrite
	$(PY) -m orbit data downscale --out data/downscale/reanalysis_16x32_x4.zarr --years 1990 1993 \
		--train-years 1990 1991 --coarse-grid 16x32 --scale 4 --step-hours 12 --overwrite
	$(PY) -m orbit data elm --out data/elm/elm_64x128_sites3.zarr --grid 64x128 --tol 0.05 \
		--site-copies 2 --overwrite

test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests

bench: setup
	OMP_NUM_THREADS=1 $(PY) benchmarks/model_step.py
