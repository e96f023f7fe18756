"""The run report's "What drives the prediction" section, from the outputs of `histoxai explain --nuclei`.

Per model (per explain output part) it shows drivers.md, turned into the report's sections so the HTML
renders its headings, lists and tables as the rest of the report does, and the response-curve and
nuclei-drivers plots (embedded in the HTML, linked from the Markdown). Without drivers.md the section
says the run did not ask for it. `drivers_facts` reads the key facts for summary.json from the tables:
per target the property each answer ranks first, and the explain step's verdict on whether they agree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import pandas as pd

from histoxai import artifacts, storage
from histoxai.errors import InputError

NOT_ASKED = ("The run did not ask for it: no {name} in this model's explain output (pipeline parameter "
             "`explain_nuclei`, or `histoxai explain --nuclei`).")
PLOTS = ((artifacts.RESPONSE_PLOT, "response of the prediction when one nuclear property of the phantom "
                                   "is changed (mean over voxels; dashed: truth)"),
         (artifacts.DRIVERS_PLOT, "within-map rank correlation of relevance with each nuclear property "
                                  "(95 % CI; controls marked)"))
_CELL = re.compile(r"(?<!\\)\|")
_IMAGE = re.compile(r"^!\[.*\]\(.*\)$")


def _table(lines: list[str]) -> pd.DataFrame:
    """A Markdown pipe table (header, separator, rows) as a DataFrame of strings."""
    def cells(line: str) -> list[str]:
        return [c.strip().replace("\\|", "|") for c in _CELL.split(line.strip().strip("|"))]

    header = cells(lines[0])
    body = [cells(line) for line in lines[1:] if not set(line.replace("|", "").strip()) <= set("-: ")]
    body = [(row + [""] * len(header))[:len(header)] for row in body]
    return pd.DataFrame(body, columns=header)


def markdown_sections(text: str) -> list[tuple[str, object]]:
    """Markdown text as report sections: headings ('#' is left out: the section has its title; '##' and
    deeper become h3), paragraphs, '- ' lists, pipe tables and code blocks; image lines are left out."""
    sections: list[tuple[str, object]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        stripped = line.strip()
        if not stripped or _IMAGE.match(stripped):
            i += 1
        elif stripped.startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```")),
                       len(lines))
            sections.append(("pre", "\n".join(lines[i + 1:end])))
            i = end + 1
        elif stripped.startswith("#"):
            level = len(stripped) - len(stripped.lstrip("#"))
            if level > 1:
                sections.append(("h3", stripped.lstrip("#").strip()))
            i += 1
        elif stripped.startswith("|"):
            end = i
            while end < len(lines) and lines[end].strip().startswith("|"):
                end += 1
            sections.append(("table", _table(lines[i:end])))
            i = end
        elif stripped.startswith(("- ", "* ")):
            items = []
            while i < len(lines) and lines[i].strip().startswith(("- ", "* ")):
                items.append(lines[i].strip()[2:].strip())
                i += 1
            sections.append(("list", items))
        else:
            paragraph = []
            while i < len(lines) and lines[i].strip() and not lines[i].strip().startswith(("#", "|", "- ",
                                                                                           "* ", "```")):
                paragraph.append(lines[i].strip())
                i += 1
            sections.append(("p", " ".join(paragraph)))
    return sections


def _parts(maps_dirs: Mapping[str, Sequence[str]]):
    """(label, folder) per explain output: the model's name, with the part when fanned out."""
    for model, folders in maps_dirs.items():
        for part, folder in enumerate(folders):
            yield (model if len(folders) == 1 else f"{model} (part {part + 1})"), folder


def drivers_section(maps_dirs: Mapping[str, Sequence[str]]) -> tuple[list[tuple[str, object]], list[dict]]:
    """(sections, figures): per explain output an h2, drivers.md's sections and ('figures', kind)
    placeholders for its plots; figures as report.run_plots gives them (kind, caption, uri, png). When
    no output has drivers.md, one h2 saying the run did not ask for it; no explain outputs, nothing."""
    sections: list[tuple[str, object]] = []
    figures: list[dict] = []
    parts = list(_parts(maps_dirs))
    if not any(storage.exists(storage.join(f, artifacts.DRIVERS_REPORT)) for _, f in parts):
        missing = NOT_ASKED.format(name=artifacts.DRIVERS_REPORT).replace("this model's", "any")
        return ([("h2", "What drives the prediction"), ("p", missing)] if parts else []), []
    for i, (label, folder) in enumerate(parts):
        sections.append(("h2", f"What drives the prediction: model {label}"))
        report = storage.join(folder, artifacts.DRIVERS_REPORT)
        if not storage.exists(report):
            sections.append(("p", NOT_ASKED.format(name=artifacts.DRIVERS_REPORT)))
            continue
        sections += markdown_sections(storage.read_text(report))
        kind = f"drivers-{i}"
        for name, caption in PLOTS:
            uri = storage.join(folder, name)
            if storage.exists(uri):
                figures.append({"kind": kind, "caption": f"model {label}: {caption}", "uri": uri,
                                "png": storage.read_bytes(uri)})
        if any(f["kind"] == kind for f in figures):
            sections.append(("figures", kind))
    return sections, figures


def _table_or_none(folder: str, name: str, what: str) -> pd.DataFrame | None:
    uri = storage.join(folder, name)
    if not storage.exists(uri):
        return None
    try:
        return storage.read_parquet(uri, what)
    except InputError:
        return None


def _top(frame: pd.DataFrame | None, target: str, name: str, value: str, column: str | None,
         wanted: str | None) -> dict | None:
    """{name, value} of the row with the largest |value| of a target (among rows whose `column` is
    `wanted`), None when there is none or the table lacks the columns."""
    needed = {"target", name, value} | ({column} if column else set())
    if frame is None or frame.empty or not needed <= set(frame.columns):
        return None
    rows = frame[frame["target"].astype(str) == target]
    if column:
        rows = rows[rows[column] == wanted]
    rows = rows[pd.to_numeric(rows[value], errors="coerce").notna()]
    if rows.empty:
        return None
    best = rows.loc[pd.to_numeric(rows[value]).abs().idxmax()]
    return {"property": str(best[name]), value: float(best[value])}


def drivers_facts(folder: str) -> dict | None:
    """Per target of one explain output: the top property of each answer (saliency: the largest |rho|
    among properties that drive a method's relevance; concepts: the largest |effect| among concepts that
    move the prediction; interventions: the largest |standardised slope|) and the explain step's verdict
    on whether they agree (explain.json; None when it has none). None without drivers.md."""
    if not storage.exists(storage.join(folder, artifacts.DRIVERS_REPORT)):
        return None
    drivers = _table_or_none(folder, artifacts.NUCLEI_DRIVERS, "the explain step's nuclei drivers")
    concepts = _table_or_none(folder, artifacts.CONCEPTS_TABLE, "the explain step's concept table")
    responses = _table_or_none(folder, artifacts.RESPONSE_SUMMARY, "the explain step's response summary")
    try:
        agreement = artifacts.read_explain_info(folder).get("drivers", {}).get("agreement", [])
        verdicts = {str(row.get("target")): row.get("verdict") for row in agreement if isinstance(row, dict)}
    except (InputError, AttributeError):
        verdicts = {}
    targets = list(dict.fromkeys(str(t) for frame in (drivers, concepts, responses) if frame is not None
                                 and "target" in frame.columns for t in frame["target"]))
    targets += [t for t in verdicts if t not in targets]
    facts = {}
    for target in targets:
        facts[target] = {
            "saliency": _top(drivers, target, "property", "rho", "verdict", "drives"),
            "concepts": _top(concepts, target, "concept", "effect", "verdict", "moves the prediction"),
            "interventions": _top(responses, target, "property", "slope_std", None, None),
            "agreement": verdicts.get(target)}
    return {"report": storage.join(folder, artifacts.DRIVERS_REPORT), "targets": facts}


def drivers_summary(maps_dirs: Mapping[str, Sequence[str]]) -> dict:
    """summary.json's 'drivers': per explain output (label as in the section) its facts, or None when the
    run did not ask for them."""
    return {label: drivers_facts(folder) for label, folder in _parts(maps_dirs)}


def terminal_lines(drivers: Mapping) -> list[str]:
    """One line per model and target: the three answers' top properties and the verdict."""
    lines = []
    for label, facts in (drivers or {}).items():
        for target, fact in ((facts or {}).get("targets") or {}).items():
            answers = ", ".join(f"{answer} {(fact.get(answer) or {}).get('property', '-')}"
                                for answer in ("saliency", "concepts", "interventions"))
            lines.append(f"{label} {target}: {answers}; {fact.get('agreement') or 'no verdict'}")
    return lines
