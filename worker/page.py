"""A case as a page: ``cases/<cfRef>/index.html``, a pure function of manifest and payload.

The page stands alone: inline CSS, no script, no font, map or CDN, and only links relative
to the case folder (``case.pdf``, ``items/001-IT-1.jpg``), so it reads the same from the
bind-mounted archive, a copied or zipped folder opened with file://, a bucket served as a
static site, and ``casefetch archive serve``. Everything that comes from the payload or the
manifest is escaped: a description ``<img src=x onerror=...>`` is shown as text.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any
from urllib.parse import quote

from worker import archive
from worker.manifest import CaseItem, CaseStatus, Entry, FileStatus, Manifest, case_items
from worker.sniff import FileKind

#: The statuses a badge has a style for.
_STATUS_WORDS = frozenset(status.value for status in (*CaseStatus, *FileStatus))

#: Image types a browser draws; others (HEIC, TIFF) are linked, not shown.
DRAWN_IMAGES = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp"}
)
#: Case fields shown in the header; every other field is listed under "other fields".
HEADER_FIELDS = ("reportId", "createdAt", "frame", "closed")
#: Item fields shown in their own row; the others are listed as sent.
ITEM_FIELDS = (
    "cfRef",
    "stepAction",
    "description",
    "data",
    "createdAt",
    "geolocLatitude",
    "geolocLongitude",
    "imageUrl",
)

#: The page's own policy, for file:// and static sites (the server sends a stricter one).
META_POLICY = "script-src 'none'; connect-src 'none'; form-action 'none'; base-uri 'none'"

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
color:#1d2125;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:16px 20px 48px}
h1{font-size:1.5em;margin:.2em 0;word-break:break-all}
h2{font-size:1.15em;margin:1.4em 0 .5em;border-bottom:1px solid #d5d9de;padding-bottom:.2em}
h3{font-size:1em;margin:0 0 .3em}
a{color:#0b57d0}
nav{margin-bottom:8px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:.4em 0}
dt{color:#5b636b}
dd{margin:0;white-space:pre-wrap;word-break:break-word}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.88em;
word-break:break-all}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:.85em;
font-weight:600;background:#e3e6ea}
.complete,.stored{background:#d8f0dc;color:#17612a}
.incomplete,.failed{background:#fbe0df;color:#a0221b}
.pending{background:#fdf0cc;color:#7a5600}
.card{background:#fff;border:1px solid #dde1e5;border-radius:8px;padding:12px 16px;
margin:10px 0}
.item{display:grid;grid-template-columns:1fr 260px;gap:16px}
.item .file{text-align:center}
.item img{max-width:240px;max-height:240px;border:1px solid #ccd;background:#eee}
.item video{max-width:240px;max-height:240px}
.error{color:#a0221b;white-space:pre-wrap}
.warning{color:#7a5600}
object.pdf{width:100%;height:560px;border:1px solid #ccd;background:#fff}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #e3e6ea;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#eef0f3;font-weight:600}
td.num{text-align:right;white-space:nowrap}
td.nowrap{white-space:nowrap}
form.filters{display:flex;flex-wrap:wrap;gap:8px;align-items:end;margin:10px 0}
form.filters label{display:flex;flex-direction:column;font-size:.85em;color:#5b636b}
.pages{margin:12px 0;display:flex;gap:14px}
@media (max-width:700px){.item{grid-template-columns:1fr}}
"""


def text(value: Any) -> str:
    """A payload value as text, whatever its JSON type: a string as it is, anything else
    as its JSON (``12``, ``true``, ``null``, ``{"a": 1}``)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def esc(value: Any) -> str:
    return escape(text(value), quote=True)


def href(path: str) -> str:
    """A link to a file of the case, relative to the case folder, escaped for an attribute."""
    return escape(quote(path, safe="/"), quote=True)


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def document(title: str, body: str, nav: str = "", policy: str = META_POLICY) -> str:
    """A whole page around ``body`` (already HTML), with the shared style. A lone surrogate
    (JSON allows ``"\\ud800"``) is shown as its escape: the page is valid UTF-8 whatever
    the payload holds (case.json keeps the value as sent)."""
    return _encodable(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body><main>{nav}{body}</main></body></html>\n"
    )


def _encodable(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def badge(status: Any) -> str:
    word = text(status)
    known = word if word in _STATUS_WORDS else ""
    return f'<span class="badge {known}">{escape(word)}</span>'


def _rows(pairs: list[tuple[str, str]]) -> str:
    """A definition list; values are HTML already."""
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def render_case(manifest: Manifest, payload: Any, nav: str = "") -> str:
    """The case page: header, warnings, the PDF, every item in order, the raw files."""
    case = payload if isinstance(payload, dict) else {}
    cf_ref = manifest.get("cfRef", case.get("cfRef"))
    items = case_items(manifest, payload)
    parts = [_header(manifest, case), _warnings(manifest), _pdf(manifest)]
    parts.append(f"<h2>Items ({len(items)})</h2>")
    if payload is None:
        parts.append('<p class="error">case.json is missing or unreadable.</p>')
    warned = _warnings_by_item(manifest)
    parts.extend(_item(item, warned.get(item.position, [])) for item in items)
    parts.append(_raw(case))
    return document(f"{text(cf_ref)} — casefetch", "\n".join(parts), nav)


def _header(manifest: Manifest, case: dict[str, Any]) -> str:
    pairs = [(name, esc(case[name])) for name in HEADER_FIELDS if name in case]
    if "reportId" not in case:
        pairs.insert(0, ("reportId", esc(manifest.get("reportId"))))
    files = manifest.get("files") or []
    stored = sum(1 for e in files if e.get("status") == FileStatus.STORED.value)
    pairs += [
        ("status", badge(manifest.get("status"))),
        ("files", f"{stored} of {len(files)} stored"),
        ("warnings", str(len(manifest.get("warnings") or []))),
        ("archived", esc(manifest.get("updatedAt"))),
        ("delivery", f'<span class="mono">{esc(manifest.get("deliveryId"))}</span>'),
    ]
    return f"<h1>{esc(manifest.get('cfRef', case.get('cfRef')))}</h1>" + _rows(pairs)


def _warnings(manifest: Manifest) -> str:
    warnings = manifest.get("warnings") or []
    if not warnings:
        return ""
    lines = "".join(
        f"<li>item {esc(w.get('item'))} ({esc(w.get('itemCfRef'))}): {esc(w.get('errors'))}</li>"
        if isinstance(w, dict)
        else f"<li>{esc(w)}</li>"
        for w in warnings
    )
    return f'<h2>Warnings ({len(warnings)})</h2><ul class="warning">{lines}</ul>'


def _warnings_by_item(manifest: Manifest) -> dict[int, list[Any]]:
    found: dict[int, list[Any]] = {}
    for warning in manifest.get("warnings") or []:
        if isinstance(warning, dict) and isinstance(warning.get("item"), int):
            found.setdefault(warning["item"], []).append(warning.get("errors"))
    return found


def _pdf(manifest: Manifest) -> str:
    entry = next(
        (e for e in manifest.get("files") or [] if e.get("kind") == FileKind.CASE_PDF.value), None
    )
    if entry is None:
        return ""
    head = "<h2>Certificate (PDF)</h2>"
    if entry.get("status") != FileStatus.STORED.value:
        return head + _file_facts(entry)
    link = href(str(entry["path"]))
    return (
        head + _file_facts(entry) + f'<object class="pdf" data="{link}" type="application/pdf">'
        f'<p><a href="{link}">Open the PDF</a></p></object>'
    )


def _file_facts(entry: Entry) -> str:
    """Status, link, size, type, sha256 and error of one file."""
    status = entry.get("status")
    pairs = [
        (
            "file",
            f'{badge(status)} <a href="{href(str(entry["path"]))}">{esc(entry["path"])}</a>'
            if status == FileStatus.STORED.value
            else f'{badge(status)} <span class="mono">{esc(entry.get("path"))}</span>',
        )
    ]
    if status == FileStatus.STORED.value:
        size = int(entry.get("bytes") or 0)
        pairs += [
            ("size", f"{human_bytes(size)} ({size} bytes)"),
            ("type", esc(entry.get("contentType"))),
            ("sha256", f'<span class="mono">{esc(entry.get("sha256"))}</span>'),
        ]
    if entry.get("warning"):
        pairs.append(("warning", f'<span class="warning">{esc(entry["warning"])}</span>'))
    if entry.get("error"):
        pairs.append(("error", f'<span class="error">{esc(entry["error"])}</span>'))
    pairs.append(("source", f'<span class="mono">{esc(entry.get("sourceUrl"))}</span>'))
    return _rows(pairs)


def _item(item: CaseItem, warnings: list[Any]) -> str:
    fields = item.fields
    pairs = []
    for name in ITEM_FIELDS:
        if name in fields and name not in {"description", "geolocLatitude", "geolocLongitude"}:
            pairs.append((name, esc(fields[name])))
    if "geolocLatitude" in fields or "geolocLongitude" in fields:
        pairs.append(
            (
                "coordinates",
                f"{esc(fields.get('geolocLatitude'))}, {esc(fields.get('geolocLongitude'))}",
            )
        )
    pairs += [(name, esc(value)) for name, value in fields.items() if name not in ITEM_FIELDS]
    if not isinstance(item.raw, dict):
        pairs.append(("item", f'<span class="error">not an object: {esc(item.raw)}</span>'))
    pairs += [("warning", f'<span class="warning">{esc(w)}</span>') for w in warnings]
    title = (
        f"<h3>#{item.position} · {esc(fields.get('stepAction', '?'))}"
        + (f" — {esc(fields['description'])}" if "description" in fields else "")
        + "</h3>"
    )
    facts = _file_facts(item.file) if item.file else ""
    return (
        f'<section class="card item" id="item-{item.position}">'
        f"<div>{title}{_rows(pairs)}{facts}</div>"
        f'<div class="file">{_preview(item)}</div></section>'
    )


def _preview(item: CaseItem) -> str:
    entry = item.file
    if entry is None or entry.get("status") != FileStatus.STORED.value:
        return ""
    link = href(str(entry["path"]))
    content_type = str(entry.get("contentType") or "")
    label = esc(item.fields.get("data") or item.fields.get("description") or entry["path"])
    if content_type in DRAWN_IMAGES:
        return f'<a href="{link}"><img src="{link}" alt="{label}" loading="lazy"></a>'
    if content_type.startswith("video/"):
        return (
            f'<video controls preload="metadata" src="{link}"></video>'
            f'<p><a href="{link}">Open the video</a></p>'
        )
    return f'<p><a href="{link}">Open the file ({escape(content_type)})</a></p>'


def _raw(case: dict[str, Any]) -> str:
    other = [
        (name, esc(value))
        for name, value in case.items()
        if name not in {*HEADER_FIELDS, "cfRef", "caseUrl", "items"}
    ]
    parts = ["<h2>As received</h2>"]
    if "caseUrl" in case:
        other.insert(0, ("caseUrl", f'<span class="mono">{esc(case["caseUrl"])}</span>'))
    parts.append(_rows(other))
    parts.append(
        f'<p><a href="{href(archive.CASE_JSON)}">case.json</a> (the payload) · '
        f'<a href="{href(archive.MANIFEST)}">manifest.json</a> (files and checksums)'
        "</p>"
    )
    return "".join(parts)
