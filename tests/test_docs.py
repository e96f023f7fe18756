"""Figures in the docs: each marked block of README.md and docs/*.md equals its rendering from the committed
docs/figures/*.json and names only figures its source holds; each figures section says where it came from."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
sys.path.insert(0, str(DOCS))
import render  # noqa: E402
from blocks import BLOCKS, PROVENANCE_KEYS, SOURCES  # noqa: E402

MARKED = [(path, key, body) for path in render.MARKDOWN
          for key, body in render.blocks_in(path.read_text())]


def test_docs_have_figure_blocks_and_every_source_is_used():
    assert {key for _, key, _ in MARKED} == set(BLOCKS), "a block key no page shows, or a page shows no block"
    assert {source for source, _, _ in BLOCKS.values()} == set(SOURCES)


@pytest.mark.parametrize("path, key, body", MARKED, ids=[f"{p.name}:{k}" for p, k, _ in MARKED])
def test_block_matches_its_figures_file(path, key, body):
    expected = render.render_block(key)
    assert body == expected, (f"{path.name}: block {key} differs from its rendering from docs/figures/"
                              f"{SOURCES[BLOCKS[key][0]]}; run `make docs` (or python docs/render.py)")


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_figures_file_has_provenance(source):
    data = json.loads((render.FIGURES / SOURCES[source]).read_text())
    assert data["sections"], f"{SOURCES[source]} has no sections"
    for name, section in data["sections"].items():
        provenance = section.get("provenance", {})
        missing = [k for k in PROVENANCE_KEYS if k not in provenance]
        assert not missing, f"{SOURCES[source]} section {name}: provenance lacks {missing}"
        assert provenance["command"] and provenance["device"] and provenance["commit"]
        assert provenance["date"][:4].isdigit() and provenance["date"][4] == "-", provenance["date"]
        assert isinstance(section.get("figures"), dict), f"{SOURCES[source]} section {name}: no figures"


def _figures(**sections) -> dict:
    stamp = {"command": "make demo", "date": "2026-12-03T00:00:00+00:00", "device": "CPU x (2 cores)",
             "commit": "0" * 40, "dirty": False}
    return {"demo": {"sections": {name: {"provenance": stamp, "figures": figures}
                                  for name, figures in sections.items()}}}


def test_a_block_naming_a_figure_its_source_lacks_fails():
    committed = json.loads((render.FIGURES / "demo.json").read_text())["sections"]["demo"]["figures"]
    assert "\n" in render.render_block("demo-summary", _figures(demo=committed))
    without = {k: v for k, v in committed.items() if k != "demo_s"}
    with pytest.raises(KeyError):  # the figure the block names is not in the section
        render.render_block("demo-summary", _figures(demo=without))
    with pytest.raises(KeyError, match="no section"):
        render.render_block("demo-summary", _figures(other=committed))
    with pytest.raises(KeyError, match="unknown figure block"):
        render.render_block("demo-nothing", _figures(demo=committed))
    unstamped = _figures(demo=committed)
    del unstamped["demo"]["sections"]["demo"]["provenance"]["commit"]
    with pytest.raises(KeyError, match="provenance lacks"):
        render.render_block("demo-summary", unstamped)


def test_an_unpaired_marker_fails():
    with pytest.raises(ValueError, match="without its pair"):
        render.blocks_in("text\n<!-- figures:demo-r2 -->\n| a |\n")
    assert render.blocks_in("<!-- figures:demo-r2 -->\nx\n<!-- /figures -->") == [("demo-r2", "x\n")]


def test_a_section_missing_from_new_results_keeps_its_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(render, "FIGURES", tmp_path)
    old = {"provenance": {"command": "make bench", "date": "2026-12-01", "device": "d", "commit": "a",
                          "dirty": False}, "figures": {"x": 1}}
    (tmp_path / "bench.json").write_text(json.dumps({"sections": {"ingest": old, "app": old}}))
    new = {**old, "figures": {"x": 2}}
    render.merge("bench", {"app": new})
    sections = json.loads((tmp_path / "bench.json").read_text())["sections"]
    assert sections == {"ingest": old, "app": new}
