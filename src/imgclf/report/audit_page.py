"""audit.html: each suspect image with its label, the suggested one and its score, grouped by issue, filterable; the
rows a user ticks download as a CSV that ``--exclude`` or ``--relabel`` take back. A static page: no server."""

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.report.html import cards, table, write_page

SHOWN_PER_ISSUE = 300  # rows drawn per issue on the page (audit.csv lists them all)
THUMB = 72  # thumbnail side, px
TITLES = {
    "leak": ("Leaks: near copies across splits", "score: cosine similarity of the two images' embeddings"),
    "label": ("Suspected label errors", "score: 1 − the out-of-fold probability of the given label"),
    "near-duplicate": ("Near duplicates within a split", "score: cosine similarity of the two images' embeddings"),
    "stray": ("Strays: unlike any other image", "score: mean embedding distance to the 10 nearest images"),
}
PAGE_STYLE = """
.suspects img { width: 72px; height: 72px; image-rendering: pixelated; display: block; }
.suspects td { vertical-align: middle; } .suspects td.file { text-align: left; word-break: break-all; }
.tools { display: flex; gap: .6rem; align-items: center; margin: .6rem 0; flex-wrap: wrap; }
.tools input[type=search] { padding: .35rem .5rem; min-width: 16rem; }
"""
SCRIPT = """
const fields = %s;
function quote(v) { v = String(v); return /[",\\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }
function ticked() { return [...document.querySelectorAll('tr[data-row] input:checked')]
  .map(b => JSON.parse(b.closest('tr').dataset.row)); }
function csvText() { return [fields.join(',')].concat(ticked().map(r => fields.map(f => quote(r[f] ?? '')).join(',')))
  .join('\\n') + '\\n'; }
function download() {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([csvText()], {type: 'text/csv'}));
  a.download = 'audit-selected.csv'; document.body.appendChild(a); a.click(); a.remove(); }
function count() { document.getElementById('ticked').textContent = ticked().length + ' ticked'; }
function filterRows(box) { const q = box.value.toLowerCase();
  document.querySelectorAll('tr[data-row]').forEach(tr => {
    tr.hidden = q && !tr.textContent.toLowerCase().includes(q); }); }
function tickIssue(issue, on) { document.querySelectorAll(`tr[data-issue="${issue}"]:not([hidden]) input`)
  .forEach(b => { b.checked = on; }); count(); }
document.addEventListener('change', count);
"""


def image_at(images, i: int) -> np.ndarray:
    """Image ``i`` of a uint8 (N, 3, H, W) tensor or memory-mapped set, as a (3, H, W) array."""
    return np.asarray(images[i : i + 1])[0]


def thumbnail(image: np.ndarray) -> str:
    """A uint8 (3, H, W) image as an <img> with an embedded PNG of side :data:`THUMB`."""
    pil = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
    pil = pil.resize((THUMB, THUMB), Image.NEAREST if pil.width < THUMB else Image.BICUBIC)
    out = io.BytesIO()
    pil.save(out, format="PNG", optimize=True)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(out.getvalue()).decode("ascii")}">'


def suspect_row(row: dict, image: str, other: str, fields: tuple[str, ...]) -> str:
    """One table row: tick box, image (and its pair's), file, split, given, suggested, score."""
    data = html.escape(json.dumps({f: row.get(f, "") for f in fields}), quote=True)
    cells = [
        '<td><input type="checkbox" aria-label="tick"></td>',
        f"<td>{image}</td><td>{other}</td>",
        f'<td class="file">{html.escape(row["file"])}</td>',
        *(f"<td>{html.escape(str(row[k]))}</td>" for k in ("split", "given", "suggested", "score")),
        f'<td class="file">{html.escape(row.get("other", ""))}</td>',
    ]
    return f'<tr data-row="{data}" data-issue="{row["issue"]}">{"".join(cells)}</tr>'


def issue_section(issue: str, rows: list[dict], images, index_of: dict[str, int], fields: tuple[str, ...]) -> str:
    """The section of one issue: heading, how to read its score, tick-all buttons, and its first rows."""
    title, score = TITLES[issue]
    shown = rows[:SHOWN_PER_ISSUE]
    body = []
    for row in shown:
        other = row.get("other", "").removeprefix("exact copy of ")
        pair = thumbnail(image_at(images, index_of[other])) if other in index_of else ""
        body.append(suspect_row(row, thumbnail(image_at(images, row["index"])), pair, fields))
    more = f" (the first {len(shown):,} of {len(rows):,}; audit.csv lists all)" if len(rows) > len(shown) else ""
    buttons = (
        f"<button onclick=\"tickIssue('{issue}', true)\">tick all shown</button>"
        f"<button onclick=\"tickIssue('{issue}', false)\">untick</button>"
    )
    head = "".join(
        f"<th>{h}</th>" for h in ("", "image", "pair", "file", "split", "given", "suggested", "score", "other")
    )
    return (
        f'<h2 id="{issue}">{html.escape(title)}: {len(rows):,}</h2><p>{html.escape(score)}{more}</p>'
        f'<div class="tools">{buttons}</div><div class="table"><table class="suspects"><thead><tr>{head}</tr>'
        f"</thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def audit_page(path: Path, name: str, rows: list[dict], summary: dict, images, names, fields) -> Path:
    """Write audit.html for the audit of dataset ``name`` (``images[i]``: the image of file ``names[i]``;
    ``summary``: audit.json's content, its confusable class pairs included)."""
    confusable = summary.get("confusable_classes", [])
    index_of = {n: i for i, n in enumerate(names)}
    headline = [
        ("images", f"{summary['images']:,}"),
        ("suspected label errors", f"{summary['label_issues']:,}"),
        ("leaks across splits", f"{summary['leaks']:,}"),
        ("near duplicates", f"{summary['near_duplicates']:,}"),
        ("strays", f"{summary['strays']:,}"),
        ("out-of-fold accuracy", f"{summary['out_of_fold_accuracy']:.1%}"),
    ]
    body = [f"<style>{PAGE_STYLE}</style>", cards(headline)]
    body.append(
        '<div class="tools"><input type="search" placeholder="filter: file, class, split…" '
        'oninput="filterRows(this)"><button onclick="download()">download ticked rows as CSV</button>'
        '<span id="ticked">0 ticked</span></div>'
    )
    for issue in TITLES:
        chosen = [r for r in rows if r["issue"] == issue]
        if chosen:
            body.append(issue_section(issue, chosen, images, index_of, fields))
    if confusable:
        cells = [[f"{p['a']} ↔ {p['b']}", f"{p['a_as_b']:.1%}", f"{p['b_as_a']:.1%}"] for p in confusable]
        body += ["<h2>Classes most confused out of fold</h2>", table(["pair", "a as b", "b as a"], cells)]
    facts = html.escape(json.dumps(summary, indent=1))
    body.append(f"<details><summary>how this was computed</summary><pre>{facts}</pre></details>")
    body.append(f"<script>{SCRIPT % json.dumps(list(fields))}</script>")
    emb = summary["embedding"]
    subtitle = f"{emb['backbone']} embeddings at {emb['side']} px, {summary['folds']} folds, seed {summary['seed']}"
    return write_page(path, f"Audit of {name}", subtitle, body)
