"""`make docs`: collect measured figures into docs/figures/*.json, render the docs' marked blocks."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
FIGURES = DOCS / "figures"
MARKDOWN = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
# markers stand alone on their lines (one quoted inside a sentence is not one)
BLOCK = re.compile(r"^<!-- figures:(?P<key>[\w-]+) -->\n(?P<body>.*?)^<!-- /figures -->$",
                   re.DOTALL | re.MULTILINE)
MARKER = re.compile(r"^<!-- /?figures\b.*$", re.MULTILINE)

sys.path.insert(0, str(DOCS))
sys.path.insert(0, str(REPO))
from blocks import BLOCKS, PROVENANCE_KEYS, SOURCES  # noqa: E402

# --- figures files ---------------------------------------------------------------------------------------

def load(source: str) -> dict:
    path = FIGURES / SOURCES[source]
    return json.loads(path.read_text()) if path.exists() else {"sections": {}}


def save(source: str, data: dict) -> None:
    FIGURES.mkdir(exist_ok=True)
    path = FIGURES / SOURCES[source]
    text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
        print(f"docs: wrote {path}")


def merge(source: str, collected: dict[str, dict]) -> None:
    """Each collected section replaces its committed figures and provenance; the others stay as they are."""
    data = load(source)
    data["sections"].update(collected)
    save(source, data)


# --- rendering -------------------------------------------------------------------------------------------

def provenance_line(section: str, provenance: dict) -> str:
    commit = provenance["commit"]
    if commit != "unknown":
        commit = commit[:12] + (" (uncommitted changes)" if provenance["dirty"] else "")
    line = (f"<sub>Source: `{provenance['command']}` (`{section}`), {provenance['date'][:10]} UTC, "
            f"{provenance['device']}, commit {commit}.")
    if provenance.get("carried_over"):
        line += f" {provenance['carried_over']}"
    return line + "</sub>"


def render_block(key: str, figures: dict[str, dict] | None = None) -> str:
    """The Markdown between a block's markers: the table, then one provenance line per section read."""
    if key not in BLOCKS:
        raise KeyError(f"unknown figure block {key!r}; known: {', '.join(BLOCKS)}")
    source, sections, function = BLOCKS[key]
    data = (figures or {}).get(source) or load(source)
    missing = [s for s in sections if s not in data["sections"]]
    if missing:
        raise KeyError(f"block {key!r}: docs/figures/{SOURCES[source]} has no section {missing}")
    entries = [data["sections"][s] for s in sections]
    for section, entry in zip(sections, entries, strict=True):
        absent = [k for k in PROVENANCE_KEYS if k not in entry.get("provenance", {})]
        if absent:
            raise KeyError(f"docs/figures/{SOURCES[source]} section {section!r}: provenance lacks {absent}")
    text = function(*(e["figures"] for e in entries))
    lines = [provenance_line(s, e["provenance"]) for s, e in zip(sections, entries, strict=True)]
    return text + "\n\n" + "<br>\n".join(lines) + "\n"


def blocks_in(text: str) -> list[tuple[str, str]]:
    """(key, body) of every marked block; an unpaired or malformed marker is an error."""
    found = [(m.group("key"), m.group("body")) for m in BLOCK.finditer(text)]
    if len(MARKER.findall(text)) != 2 * len(found):
        raise ValueError("a figures marker without its pair (or malformed)")
    return found


def render_markdown(path: Path, figures: dict | None = None, errors: list[str] | None = None) -> str:
    """The page with every block rendered; a block that cannot be is kept as it is and its error noted
    in `errors` (raised when no list is given)."""
    text = path.read_text()
    blocks_in(text)

    def block(match) -> str:
        try:
            body = render_block(match.group("key"), figures)
        except KeyError as err:
            if errors is None:
                raise
            errors.append(f"{path.name}: {err.args[0]}")
            return match.group(0)
        return f"<!-- figures:{match.group('key')} -->\n{body}<!-- /figures -->"

    return BLOCK.sub(block, text)


def render_all() -> int:
    warned, errors = set(), []
    for path in MARKDOWN:
        text = path.read_text()
        for key, _ in blocks_in(text):
            source, sections, _ = BLOCKS.get(key, ("", (), None))
            for section in sections:
                entry = load(source)["sections"].get(section, {})
                carried = entry.get("provenance", {}).get("carried_over")
                if carried and (source, section) not in warned:
                    warned.add((source, section))
                    print(f"docs: warning: {SOURCES[source]} section {section!r} is carried over: {carried}",
                          file=sys.stderr)
        new = render_markdown(path, errors=errors)
        if new != text:
            path.write_text(new)
            print(f"docs: rendered {path.relative_to(REPO)}")
    for error in errors:
        print(f"docs: error: {error}; that block is left as it was", file=sys.stderr)
    return 1 if errors else 0


# --- collecting ------------------------------------------------------------------------------------------

def collect_bench(folder: Path) -> dict[str, dict]:
    from collect import bench_section

    results = json.loads((folder / "results.json").read_text())
    out = {}
    for name, section in results["sections"].items():
        provenance = section.get("provenance") or {
            "command": "make bench", "date": results["date"], "device": results["device"],
            "commit": "unknown", "dirty": None}
        try:
            figures = bench_section(name, section)
        except (KeyError, TypeError, ValueError) as err:  # a section whose format changed: say so, keep going
            print(f"docs: error: results.json section {name!r} lacks {err!r}; its committed figures stay "
                  "(update docs/collect.py)", file=sys.stderr)
            continue
        if figures is not None:
            out[name] = {"provenance": provenance, "figures": figures}
    return out


def collect_baseline(folder: Path) -> dict[str, dict]:
    from collect import baseline_figures

    from histoxai.provenance import stamp

    settings = json.loads((folder / "baseline.json").read_text())
    command = f"histoxai baseline --baseline-repeats {settings['settings']['repeats']} " \
              f"--seed {settings['settings']['seed']}"
    # baseline.json records no date or device: stamped now (make docs runs the baseline just before)
    return {"baseline": {"provenance": stamp(command), "figures": baseline_figures(settings)}}


def collect_demo(folder: Path, section: str) -> dict[str, dict]:
    from collect import demo_figures

    record = json.loads((folder / "demo.json").read_text())
    provenance = {k: record[k] for k in PROVENANCE_KEYS}
    return {section: {"provenance": provenance, "figures": demo_figures(folder, record)}}


def images(demo: Path) -> None:
    """The pictures of the demo run in docs/: the multi-task model's plots and the app's screenshot."""
    from screens import app_screenshot

    run = demo / json.loads((demo / "demo.json").read_text())["run_dir"]
    plots = next(run.rglob("evaluation/plots/multitask"))
    for name, target in (("learning-curves.png", "learning-curves.png"),
                         ("MD.png", "measured-vs-predicted.png")):
        shutil.copyfile(plots / name, DOCS / target)
        print(f"docs: copied {plots / name} to docs/{target}")
    app_screenshot(run, DOCS / "app.png")
    print("docs: wrote docs/app.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python docs/render.py", description=__doc__)
    parser.add_argument("--bench", type=Path, help="make bench's output folder (results.json)")
    parser.add_argument("--demo", type=Path, help="make demo's output folder (demo.json, runs/, registry/)")
    parser.add_argument("--demo-derived", type=Path, help="output folder of `python -m "
                        "histoxai.pipelines.demo --targets derived`")
    parser.add_argument("--baseline", type=Path, help="`histoxai baseline --out` folder (baseline.json)")
    parser.add_argument("--no-images", action="store_true", help="leave docs/*.png as they are")
    args = parser.parse_args(argv)
    for folder, wanted in ((args.bench, "results.json"), (args.demo, "demo.json"),
                           (args.demo_derived, "demo.json"), (args.baseline, "baseline.json")):
        if folder is not None and not (folder / wanted).exists():
            print(f"docs: {folder / wanted} not found: that input is skipped, its figures stay as committed")
    if args.bench and (args.bench / "results.json").exists():
        merge("bench", collect_bench(args.bench))
    if args.baseline and (args.baseline / "baseline.json").exists():
        merge("baseline", collect_baseline(args.baseline))
    if args.demo_derived and (args.demo_derived / "demo.json").exists():
        merge("demo", collect_demo(args.demo_derived, "demo-derived"))
    if args.demo and (args.demo / "demo.json").exists():
        merge("demo", collect_demo(args.demo, "demo"))
        if not args.no_images:
            images(args.demo)
    return render_all()


if __name__ == "__main__":
    sys.exit(main())
