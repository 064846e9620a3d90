"""HCS, the Hetero-Compute-Router: vendor-neutral accelerator compute for Kubernetes."""

__version__ = "0.1.0"
