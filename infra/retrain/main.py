"""Entry module of the retraining function: the platform loads main.py; the handler is in histoxai.retrain."""

from histoxai.retrain import on_sample_uploaded

__all__ = ["on_sample_uploaded"]
