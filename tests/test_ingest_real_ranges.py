"""The range checks ingestion applies to MR maps accept all 16 real samples of the bundled summary.mat
and refuse a damaged one."""

from __future__ import annotations

import numpy as np
import pytest

from histoxai.errors import InputError


def test_every_real_sample_passes_the_range_checks():
    """The bounds catch damage, never the study's own maps: all 16 samples of the bundled summary.mat."""
    from histoxai.components.ingest.inputs import PLAUSIBLE, check_ranges
    from histoxai.summary import SummaryFile

    summary = SummaryFile()
    for n, cell in enumerate(summary.cells("sMR"), start=1):
        maps = {name: np.asarray(summary.field(cell, name, f"sMR{{{n}}}"), dtype=float)
                for name in (*PLAUSIBLE, "ROI") if name in cell._fieldnames}
        check_ranges(maps, f"sample {n}")
    broken = {**maps, "MD": np.where(maps["ROI"] == 1, 1852.0, maps["MD"])}
    with pytest.raises(InputError, match="MR.MD is 1852"):
        check_ranges(broken, "sample 16")
