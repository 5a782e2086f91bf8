"""Rows printed as a table, CSV, JSON or YAML: `--format` of every list command.

The table is the boxed layout of `lxc`/`amc` lists; JSON and YAML carry the full
values (a table may shorten them, e.g. fingerprints to 12 digits).
"""
import csv
import io
import json

__all__ = ["FORMATS", "render", "to_yaml", "human_size"]

FORMATS = ("table", "csv", "json", "yaml")


def render(rows, columns, fmt="table", short=None):
    """rows: dicts; columns: (key, HEADER) pairs; short: key -> function for tables."""
    if fmt == "json":
        return json.dumps(rows, indent=2, sort_keys=False) + "\n"
    if fmt == "yaml":
        return to_yaml(rows)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([h for _, h in columns])
        for row in rows:
            writer.writerow([_text(row.get(k)) for k, _ in columns])
        return out.getvalue()
    short = short or {}
    cells = [[h for _, h in columns]]
    for row in rows:
        cells.append([short[k](row.get(k)) if k in short else _text(row.get(k))
                      for k, _ in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    lines = [rule]
    for n, r in enumerate(cells):
        lines.append("|" + "|".join(f" {c.ljust(w)} " for c, w in zip(r, widths)) + "|")
        if n == 0:
            lines.append(rule)
    lines.append(rule)
    return "\n".join(lines) + "\n"


def human_size(size) -> str:
    """1536 -> '1.5 KB', 210641114 -> '210.6 MB' (SI units, as `ls -h --si` and amc)."""
    size = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            break
        size /= 1000
    return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"


def _text(value):
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _scalar(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    # JSON strings are valid YAML double-quoted scalars: always unambiguous.
    return json.dumps(str(value), ensure_ascii=False)


def to_yaml(value, indent=0):
    """A YAML rendering of JSON-like data (dicts, lists, scalars)."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return pad + "{}\n"
        out = []
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{k}:\n" + to_yaml(v, indent + 1))
            else:
                out.append(f"{pad}{k}: {_inline(v)}\n")
        return "".join(out)
    if isinstance(value, list):
        if not value:
            return pad + "[]\n"
        out = []
        for item in value:
            if isinstance(item, (dict, list)) and item:
                body = to_yaml(item, indent + 1)
                out.append(f"{pad}- " + body[len(pad) + 2:])
            else:
                out.append(f"{pad}- {_inline(item)}\n")
        return "".join(out)
    return pad + _scalar(value) + "\n"


def _inline(value):
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)
