"""MATLAB .mat files: read v5 (scipy) and v7.3 (HDF5), write both, read big arrays by row blocks.

MATLAB stores arrays column-major, so h5py sees a v7.3 array of MATLAB shape (H, W, 3) as
(3, W, H). Everything here speaks MATLAB orientation: callers never see the transposed layout.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from histoxai.errors import InputError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # where a v7.3 file's HDF5 part begins, after its 512-byte header
_V73_HEADER_TEXT = "MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: histoxai HDF5 schema 1.00 ."
_MATLAB_CLASS = {
    np.dtype("float64"): "double", np.dtype("float32"): "single", np.dtype("uint8"): "uint8",
    np.dtype("uint16"): "uint16", np.dtype("uint32"): "uint32", np.dtype("int32"): "int32",
    np.dtype("int64"): "int64", np.dtype("bool"): "logical",
}


def _v73_userblock() -> bytes:
    text = _V73_HEADER_TEXT.ljust(116).encode("ascii")
    return (text + b"\x00" * 8 + b"\x00\x02" + b"IM").ljust(512, b"\x00")


class MatFile:
    """An open .mat file of either version. Use `open_mat`."""

    def __init__(self, path: Path | str, fileobj=None):
        """`fileobj`: read a v7.3 file through this seekable file object instead of `path` (then only a
        label for messages), e.g. histoxai.ranged.RangedFile over gs://."""
        self.path = path
        self._h5 = None
        self._v5: dict | None = None
        self._ranged = fileobj is not None
        self._readers: dict = {}  # variable -> histoxai.chunked band reader, made at its first read_rows
        self._scratch = contextlib.ExitStack()
        try:
            import h5py

            if fileobj is not None:
                fileobj.seek(512)
                if fileobj.read(8) != HDF5_SIGNATURE:
                    raise InputError(f"{path}: not a MATLAB v7.3 (HDF5) file; expected one to read by ranges")
                self._h5 = h5py.File(fileobj, "r")
            elif h5py.is_hdf5(path):
                # HDF5's chunk cache stays small: histoxai.chunked reads whole chunks and caches rows itself
                self._h5 = h5py.File(path, "r")
            else:
                import scipy.io

                self._v5 = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
        except FileNotFoundError as err:
            raise InputError(f"{path}: file not found") from err
        except InputError:
            raise
        except Exception as err:  # scipy/h5py raise many types for a damaged file
            raise InputError(f"{path}: not a readable MATLAB v5 or v7.3 file ({err})") from err

    @property
    def version(self) -> str:
        return "7.3" if self._h5 is not None else "5"

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
        self._scratch.close()
        if self._h5 is not None:
            self._h5.close()

    def variables(self) -> list[str]:
        if self._h5 is not None:
            return [k for k in self._h5.keys() if not k.startswith("#")]
        return [k for k in self._v5 if not k.startswith("__")]

    def _require(self, name: str) -> None:
        if name not in self.variables():
            raise InputError(f"{self.path}: variable '{name}' missing (found: {', '.join(self.variables())})")

    def read(self, name: str) -> np.ndarray:
        """A whole numeric variable, in MATLAB orientation."""
        self._require(name)
        if self._h5 is not None:
            node = self._h5[name]
            if not hasattr(node, "shape"):
                raise InputError(f"{self.path}: '{name}' is a struct, expected an array")
            return self._h5_array(node, name)
        value = self._v5[name]
        if hasattr(value, "_fieldnames"):
            raise InputError(f"{self.path}: '{name}' is a struct, expected an array")
        return np.asarray(value)

    def read_struct(self, name: str) -> dict[str, np.ndarray]:
        """The numeric fields of a struct variable (non-numeric fields are skipped)."""
        self._require(name)
        out = {}
        if self._h5 is not None:
            group = self._h5[name]
            if hasattr(group, "shape"):
                raise InputError(f"{self.path}: '{name}' is an array, expected a struct")
            for field, node in group.items():
                if hasattr(node, "shape") and node.dtype.kind in "biuf":
                    out[field] = self._h5_array(node, f"{name}.{field}")
            return out
        value = self._v5[name]
        if not hasattr(value, "_fieldnames"):
            raise InputError(f"{self.path}: '{name}' is an array, expected a struct")
        for field in value._fieldnames:
            arr = np.asarray(getattr(value, field))
            if arr.dtype.kind in "biuf":
                out[field] = arr
        return out

    def _h5_array(self, node, label: str) -> np.ndarray:
        try:
            return np.asarray(node[()]).T
        except Exception as err:
            raise InputError(f"{self.path}: cannot read '{label}' ({err})") from err

    def shape(self, name: str) -> tuple[int, ...]:
        """MATLAB shape of a variable without reading it."""
        self._require(name)
        if self._h5 is not None:
            return tuple(reversed(self._h5[name].shape))
        return np.shape(self._v5[name])

    def dtype(self, name: str) -> np.dtype:
        """Element type of a variable without reading it."""
        self._require(name)
        if self._h5 is not None:
            return self._h5[name].dtype
        return np.asarray(self._v5[name]).dtype

    def band_reader(self, name: str):
        """The histoxai.chunked reader behind `read_rows` for a v7.3 variable (its strategy and counts)."""
        self._require(name)
        if name not in self._readers:
            from histoxai import chunked, outputs

            node = self._h5[name]
            if not hasattr(node, "shape"):
                raise InputError(f"{self.path}: '{name}' is a struct, expected an array")
            folder = None
            if chunked.needs_scratch(node, ranged=self._ranged):
                folder = str(self._scratch.enter_context(outputs.scratch_dir("matfile")))
            self._readers[name] = chunked.band_reader(node, f"{self.path} ({name})", ranged=self._ranged,
                                                      folder=folder)
        return self._readers[name]

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a variable (MATLAB orientation). Read top to bottom in bands, each stored
        chunk is decompressed about once whatever the file's chunk layout (histoxai.chunked)."""
        self._require(name)
        if self._h5 is None:
            return np.asarray(self._v5[name])[start:stop]
        try:
            return self.band_reader(name).rows(start, stop)
        except InputError:
            raise
        except Exception as err:
            raise InputError(f"{self.path}: cannot read rows {start}-{stop} of '{name}' ({err})") from err


@contextmanager
def open_mat(path: str | os.PathLike, fileobj=None) -> Iterator[MatFile]:
    mat = MatFile(Path(path) if fileobj is None else path, fileobj)
    try:
        yield mat
    finally:
        mat.close()


class _RowWriter:
    """A v7.3 array written band by band (MATLAB orientation), for arrays too big for memory."""

    def __init__(self, dataset):
        self._ds = dataset

    def write_rows(self, start: int, rows: np.ndarray) -> None:
        index = (slice(None),) * (self._ds.ndim - 1) + (slice(start, start + rows.shape[0]),)
        self._ds[index] = rows.T


class MatWriterV73:
    """Writes a MATLAB v7.3 file (HDF5 with MATLAB's 512-byte header), deterministically:
    no timestamps, so the same content gives byte-identical files."""

    def __init__(self, path: str | os.PathLike):
        import h5py

        self._h5py = h5py
        self.path = Path(path)
        self._file = h5py.File(self.path, "w", userblock_size=512, libver="earliest")

    def _group(self, name: str, parent=None):
        h5py = self._h5py
        parent = parent if parent is not None else self._file
        gcpl = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
        gcpl.set_obj_track_times(False)
        gid = h5py.h5g.create(parent.id, name.encode(), gcpl=gcpl)
        group = h5py.Group(gid)
        group.attrs.create("MATLAB_class", np.bytes_("struct"))
        return group

    def _dataset(self, parent, name, shape, dtype, chunks=None, compress=False):
        dtype = np.dtype(dtype)
        stored = np.uint8 if dtype == np.bool_ else dtype
        ds = parent.create_dataset(
            name, shape=tuple(reversed(shape)), dtype=stored, track_times=False,
            chunks=tuple(reversed(chunks)) if chunks else None,
            compression="gzip" if compress else None, compression_opts=1 if compress else None,
        )
        ds.attrs.create("MATLAB_class", np.bytes_(_MATLAB_CLASS.get(dtype, "double")))
        if dtype == np.bool_:
            ds.attrs.create("MATLAB_int_decode", np.int32(1))
        return ds

    def write(self, name: str, array: np.ndarray, *, compress: bool = True) -> None:
        array = np.asarray(array)
        ds = self._dataset(self._file, name, array.shape, array.dtype,
                           chunks=None if array.size < 4096 else _auto_chunks(array.shape),
                           compress=compress and array.size >= 4096)
        ds[...] = array.T.astype(ds.dtype, copy=False)

    def write_struct(self, name: str, fields: dict[str, np.ndarray]) -> None:
        group = self._group(name)
        for field, value in fields.items():
            value = np.asarray(value)
            ds = self._dataset(group, field, value.shape, value.dtype)
            ds[...] = value.T.astype(ds.dtype, copy=False)

    def create_array(self, name: str, shape: tuple[int, ...], dtype, *, chunks: tuple[int, ...],
                     compress: bool = False) -> _RowWriter:
        return _RowWriter(self._dataset(self._file, name, shape, dtype, chunks=chunks, compress=compress))

    def close(self) -> None:
        self._file.close()
        with open(self.path, "r+b") as fh:
            fh.write(_v73_userblock())

    def __enter__(self) -> MatWriterV73:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _auto_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(min(s, 256) if i < 2 else s for i, s in enumerate(shape))


def write_v5(path: str | os.PathLike, variables: dict) -> None:
    """A MATLAB v5 file (structs as dicts); for arrays under 2 GB."""
    import scipy.io

    scipy.io.savemat(str(path), variables, do_compression=True, long_field_names=True)
