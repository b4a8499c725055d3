"""The archive browser's own pages: the list of cases and the quarantine. Pure functions
from rows to HTML, in the case page's style (worker.page); every value is escaped."""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from worker.catalog import Query, Row
from worker.manifest import CaseStatus
from worker.page import META_POLICY, badge, document, esc, human_bytes

#: In the order lists and filters show them.
STATUSES = (CaseStatus.COMPLETE.value, CaseStatus.INCOMPLETE.value, CaseStatus.PENDING.value)

NAV = '<nav><a href="/">Cases</a> · <a href="/quarantine">Quarantine</a></nav>'


def case_link(row: Row) -> str:
    return f"/cases/{quote(row.name, safe='')}/"


def render_list(rows: list[Row], total: int, query: Query, form: dict[str, str]) -> str:
    """One page of cases with the filter form and links to the other pages."""
    page = query.offset // query.limit + 1
    pages = max(1, -(-total // query.limit))
    body = [
        f"<h1>Cases</h1>{_filters(form)}",
        f"<p>{total} case{'s' if total != 1 else ''}"
        + (f" · page {page} of {pages}" if pages > 1 else "")
        + "</p>",
    ]
    if rows:
        body.append(_table(rows))
    body.append(_pager(form, page, pages))
    return document(
        "Cases — casefetch",
        "".join(body),
        NAV,
        policy=META_POLICY.replace("form-action 'none'", "form-action 'self'"),
    )


def _filters(form: dict[str, str]) -> str:
    options = "".join(
        f'<option value="{value}"{" selected" if form.get("status") == value else ""}>'
        f"{value or 'any'}</option>"
        for value in ("", *STATUSES)
    )

    def field(name: str, label: str, kind: str) -> str:
        return (
            f'<label>{label}<input type="{kind}" name="{name}" '
            f'value="{escape(form.get(name, ""), quote=True)}"></label>'
        )

    return (
        '<form class="filters" method="get" action="/">'
        + field("q", "cfRef or reportId", "search")
        + f'<label>status<select name="status">{options}</select></label>'
        + field("since", "archived from", "date")
        + field("until", "archived until", "date")
        + '<button type="submit">Show</button></form>'
    )


def _table(rows: list[Row]) -> str:
    head = "".join(
        f"<th>{name}</th>"
        for name in (
            "cfRef",
            "reportId",
            "status",
            "files",
            "failed",
            "warnings",
            "size",
            "created",
            "archived",
        )
    )
    lines = []
    for row in rows:
        lines.append(
            f'<tr><td class="nowrap"><a href="{escape(case_link(row), quote=True)}">'
            f"{esc(row.cfRef)}</a></td>"
            f'<td class="nowrap">{esc(row.reportId or "")}</td><td>{badge(row.status)}</td>'
            f'<td class="num">{row.filesStored}/{row.filesTotal}</td>'
            f'<td class="num">{row.filesFailed or ""}</td>'
            f'<td class="num">{row.warnings or ""}</td>'
            f'<td class="num">{human_bytes(row.bytes)}</td>'
            f'<td class="nowrap">{esc(row.createdAt or "")}</td>'
            f'<td class="nowrap">{esc(row.updatedAt or "")}</td></tr>'
        )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def _pager(form: dict[str, str], page: int, pages: int) -> str:
    def link(number: int, label: str) -> str:
        params = {k: v for k, v in form.items() if v and k != "page"}
        if number > 1:
            params["page"] = str(number)
        return f'<a href="/?{escape(urlencode(params), quote=True)}">{label}</a>'

    links = []
    if page > 1:
        links.append(link(page - 1, "← newer"))
    if page < pages:
        links.append(link(page + 1, "older →"))
    return f'<div class="pages">{"".join(links)}</div>'


def render_quarantine(records: list[dict[str, Any]]) -> str:
    """Every quarantined delivery, newest first: why, when, and what was wrong."""
    lines = []
    for record in records:
        errors = "".join(f"<li>{esc(line)}</li>" for line in record.get("errors") or [])
        replay = f"<br>replay of {esc(record['replayOf'])}" if record.get("replayOf") else ""
        lines.append(
            f'<tr><td class="mono">{esc(record.get("deliveryId"))}{replay}</td>'
            f"<td>{esc(record.get('receivedAt'))}</td><td>{esc(record.get('reason'))}</td>"
            f'<td class="num">{esc(record.get("bytes"))}</td>'
            f'<td><ul class="error">{errors}</ul></td></tr>'
        )
    head = "".join(
        f"<th>{name}</th>" for name in ("deliveryId", "received", "reason", "bytes", "errors")
    )
    table = (
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"
        if lines
        else ""
    )
    count = len(records)
    return document(
        "Quarantine — casefetch",
        f"<h1>Quarantine</h1><p>{count} deliver{'y' if count == 1 else 'ies'}; "
        "replay them with <code>casefetch quarantine replay</code>.</p>" + table,
        NAV,
    )
