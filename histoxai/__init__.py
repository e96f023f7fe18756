"""histoxai: explainable deep learning on coregistered histology and diffusion MRI."""

__version__ = "0.1.0"
