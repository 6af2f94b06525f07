"""ORBIT: Earth-system foundation models from a laptop CPU to a Frontier-class cluster."""
from setuptools import find_packages, setup

setup(
    name="orbit-earth",
    version="0.1.0",
    description="ORBIT vision transformer for Earth-system foundation models, with a hybrid parallel engine",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["orbit", "orbit.*"]),
    install_requires=[
        "torch>=2.6",
        "timm>=1.0",
        "einops>=0.7",
        "numpy>=1.24",
        "xarray>=2024.1",
        "zarr>=2.16",
        "netCDF4>=1.6",
        "cftime>=1.6",
        "scipy>=1.10",
        "pyyaml>=6",
        "tqdm>=4.60",
        "tensorboard>=2.14",
        "matplotlib>=3.7",
        "scikit-image>=0.22",
    ],
    extras_require={
        "dev": ["pytest>=7", "pytest-xdist>=3", "esmvaltool-sample-data", "iris-sample-data", "deepspeed>=0.14",
                "mpi4py>=3.1", "mpich"],
        "mpi": ["mpi4py>=3.1"],
        "deepspeed": ["deepspeed>=0.14"],
        "uq": ["emcee>=3", "mapie>=1.0", "scikit-learn>=1.4"],
        "hydro": ["captum>=0.7", "shap>=0.44"],
        "land": ["emcee>=3", "sbi>=0.22", "corner>=2.2"],
    },
    entry_points={"console_scripts": ["orbit=orbit.cli:main"]},
)
