"""Entry module of the retraining function: the platform loads main.py; the handler lives in
histoxai.pipelines.retrain (pipelines/retrain.py)."""

from histoxai.pipelines.retrain import on_sample_uploaded

__all__ = ["on_sample_uploaded"]
