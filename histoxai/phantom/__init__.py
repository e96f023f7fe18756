"""The digital phantom: H&E-like histology rendered from real per-voxel maps, in the dataset's layout."""


def __getattr__(name: str):
    # Lazy, so that `histoxai --help` (which imports the CLI module) does not import numpy.
    if name == "render_phantom":
        from histoxai.phantom.writer import render_phantom

        return render_phantom
    raise AttributeError(f"module 'histoxai.phantom' has no attribute {name!r}")


__all__ = ["render_phantom"]
