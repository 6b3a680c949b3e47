"""mmfast: fused kernels, methods and evaluation protocols for robust multi-modal learning."""

from mmfast._backends import backends, backends_summary

__version__ = "0.1.0"
__all__ = ["backends", "backends_summary", "__version__"]
