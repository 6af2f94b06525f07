"""ORBIT: a vision transformer for Earth-system foundation models and the framework to train it."""
__version__ = "0.1.0"
