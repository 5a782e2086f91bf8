"""What a bench run reports: progress lines on stderr while it runs, and the
table (metric | aar | reference | ratio | target) on stdout at the end.

A Row is one line of that table, with its notes and its sub-rows; the row
plans in requestrows.py and transferrows.py fill it in.
"""
import sys
import time


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Row:
    def __init__(self, key, metric, unit, target=None, higher=True):
        self.key, self.metric, self.unit = key, metric, unit
        self.target = target            # ratio the row must reach, or None
        self.higher = higher
        self.aar = self.ref = None      # numbers
        self.ref_name = ""
        self.aar_text = self.ref_text = None   # preformatted alternative
        self.ratio = None
        self.target_text = f">= {target}" if target is not None else "-"
        self.na = None                  # reason the row could not be measured
        self.notes = []
        self.sub = []                   # extra rows printed under this one

    def verdict(self):
        if self.na or self.ratio is None or self.target is None:
            return ""
        return "ok" if self.ratio >= self.target else "MISS"

    def as_dict(self):
        return {k: v for k, v in dict(
            key=self.key, metric=self.metric, unit=self.unit, aar=self.aar, reference=self.ref,
            reference_name=self.ref_name, ratio=self.ratio, target=self.target_text,
            verdict=self.verdict(), na=self.na, notes=self.notes,
            aar_text=self.aar_text, ref_text=self.ref_text,
            sub=[s.as_dict() for s in self.sub]).items() if v not in (None, [], "")}


def fmt(v):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def print_table(rows, header, out=sys.stdout):
    cols = ["metric", "aar", "reference", "ratio", "target"]
    lines = []
    for r in rows:
        for i, row in enumerate([r] + r.sub):
            label = (f"{row.key:<3}{row.metric}" + (f" ({row.unit})" if row.unit else ""))
            if row.na:
                aar, ref, ratio, tgt = "n/a", "", "", row.target_text
            else:
                aar = row.aar_text or fmt(row.aar)
                ref = row.ref_text or (f"{row.ref_name} {fmt(row.ref)}" if row.ref_name or row.ref
                                       is not None else "-")
                ratio = f"{row.ratio:.2f}" if row.ratio is not None else "-"
                tgt = row.target_text + (f"  {row.verdict()}" if row.verdict() else "")
            lines.append([label, aar, ref, ratio, tgt])
            if row.na:
                lines.append(["", f"    n/a: {row.na}"])
            for n in row.notes:
                lines.append(["", "    " + n])
    width = [max(len(c), *(len(ln[i]) for ln in lines if len(ln) > i and not
                           (i == 1 and len(ln) == 2))) for i, c in enumerate(cols)]
    width[1] = min(width[1], 24)
    width[0] = min(width[0], 52)
    print("", file=out)
    for h in header:
        print(h, file=out)
    print("", file=out)
    print(" | ".join(c.ljust(width[i]) for i, c in enumerate(cols)).rstrip(), file=out)
    print("-+-".join("-" * w for w in width), file=out)
    for ln in lines:
        if len(ln) == 2:
            print(" " * (width[0]) + " " + ln[1], file=out)
        else:
            print(" | ".join(c.ljust(width[i]) for i, c in enumerate(ln)).rstrip(), file=out)
    print("", file=out)

