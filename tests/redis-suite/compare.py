#!/usr/bin/env python3
"""Compare a test suite's results directly against Redis and through statecar.

    compare.py [--exclusions FILE] [--json FILE] DIRECT STATECAR

DIRECT and STATECAR are either logs of Redis's Tcl suite as tests/redis-suite/run.sh writes
them (`### unit: ...` markers around each unit's `[ok]:` / `[err]:` / `[skip]:` / `[ignore]:` /
`[exception]:` lines) or JUnit XML files (pytest --junitxml, as tests/redis-suite/redis-py.sh
writes them), told apart by the `.xml` suffix.

A test is identified by (unit, name, occurrence): Redis's suite repeats names (the same test
body run for each encoding, say), so the third "LPOS basic usage" of unit/type/list is matched
with the third one of the other run.

Prints the tests passed directly, passed through statecar, the share of the direct passes that
also pass through statecar, and each test that passes directly but not through statecar, with
its error (or why it never ran: the unit's exception or timeout). Exits 1 if any of those is
not covered by the exclusions file, 0 otherwise (2 on bad input).

Exclusions file: one test per line, `NAME # reason`; NAME is the exact test name, or a regular
expression searched in the name when it starts with `/` (the Tcl suite's own --skiptest
convention). Blank lines and lines starting with `#` are comments. An optional `UNIT:: ` prefix
restricts a line to one unit (for the Tcl suite, e.g. `unit/slowlog:: /^SLOWLOG/`).
"""

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter, OrderedDict

ANSI = re.compile(r"\x1b\[[0-9;]*m")
OK = re.compile(r"^\[ok\]: (.*) \(\d+ ms\)$")
ERR = re.compile(r"^\[err\]: (.*) in (tests/\S+\.tcl)$")
SKIP = re.compile(r"^\[skip\]: (.*)$")
IGNORE = re.compile(r"^\[ignore\]: (.*?): (Tag: .*|Not supported .*|large memory .*)$")
EXCEPTION = re.compile(r"^\[exception\]: (.*)$")
TIMEOUT = re.compile(r"^\[TIMEOUT\]: (.*)$")
# Lines that end the detail of an [err] or [exception]: anything the test server prints itself.
SERVER_LINE = re.compile(
    r"^(\[(ok|err|skip|ignore|exception|TIMEOUT|ready|\d+/\d+ done)\]|### |Testing unit/|"
    r"\s+The End$|Killing still running|Execution time of|Cleanup: |\\o/|!!! WARNING|"
    r"===== )"
)


class Result:
    __slots__ = ("status", "detail")

    def __init__(self, status, detail=""):
        self.status = status  # ok | err | skip | ignore
        self.detail = detail


class Run:
    """One run's results: (unit, name, occurrence) -> Result, and per-unit trouble."""

    def __init__(self, path):
        self.path = path
        self.results = OrderedDict()
        self.unit_trouble = {}  # unit -> text (exception, timeout, non-zero exit)
        self.units = []
        self.meta = {}
        self._seen = Counter()

    def add(self, unit, name, status, detail=""):
        self._seen[(unit, name)] += 1
        self.results[(unit, name, self._seen[(unit, name)])] = Result(status, detail)

    def count(self, status):
        return sum(1 for r in self.results.values() if r.status == status)


def parse_tcl(path):
    run = Run(path)
    unit = "?"
    pending = None  # (kind, unit, name, [lines]) while reading an err/exception detail
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [ANSI.sub("", line.rstrip("\n")) for line in f]

    def flush():
        nonlocal pending
        if pending is None:
            return
        kind, u, name, detail = pending
        detail = [d for d in detail if d.strip()]
        # A test that failed on an error rather than an assertion loses the first 10
        # characters of its message (test.tcl strips "assertion:" from every message); the
        # next line, from errorInfo, holds it whole.
        if len(detail) >= 2 and detail[1].endswith(detail[0]) and len(detail[1]) > len(detail[0]):
            detail = detail[1:]
        text = "\n".join(detail)
        if kind == "err":
            run.add(u, name, "err", text)
        else:
            run.unit_trouble[u] = (run.unit_trouble.get(u, "") + "\n" + text).strip()
        pending = None

    for line in lines:
        if pending is not None and not SERVER_LINE.match(line):
            pending[3].append(line)
            continue
        flush()
        if line.startswith("### unit: "):
            unit = line[len("### unit: "):].strip()
            run.units.append(unit)
            continue
        if line.startswith("### unit-end: "):
            m = re.match(r"### unit-end: (\S+) rc=(\d+)", line)
            # runtest exits 1 when a test failed; 124/137 is timeout(1) ending it.
            if m and m.group(2) in ("124", "137") and not run.unit_trouble.get(m.group(1)):
                run.unit_trouble[m.group(1)] = "killed after UNIT_TIMEOUT seconds"
            continue
        if line.startswith("### "):
            key, _, value = line[4:].partition(": ")
            run.meta[key] = value
            continue
        m = OK.match(line)
        if m:
            run.add(unit, m.group(1), "ok")
            continue
        m = ERR.match(line)
        if m:
            pending = ("err", unit, m.group(1), [])
            continue
        m = IGNORE.match(line)
        if m:
            run.add(unit, m.group(1), "ignore", m.group(2))
            continue
        m = SKIP.match(line)
        if m:
            run.add(unit, m.group(1), "skip")
            continue
        m = EXCEPTION.match(line) or TIMEOUT.match(line)
        if m:
            pending = ("trouble", unit, None, [line])
            continue
    flush()
    return run


def parse_junit(path):
    run = Run(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        print(f"compare.py: cannot read {path}: {e}", file=sys.stderr)
        sys.exit(2)
    for case in root.iter("testcase"):
        classname = case.get("classname", "")
        # pytest's classname is module.Class: the module is the unit.
        parts = classname.split(".")
        unit = ".".join(p for p in parts if not p[:1].isupper()) or classname
        cls = ".".join(p for p in parts if p[:1].isupper())
        name = (cls + "::" if cls else "") + case.get("name", "")
        if unit not in run.units:
            run.units.append(unit)
        status, detail = "ok", ""
        for child in case:
            tag = child.tag
            if tag in ("failure", "error"):
                status = "err"
                msg = child.get("message") or ""
                body = (child.text or "").strip().splitlines()
                # The assertion or exception line pytest prints with "E   ".
                e_lines = [b[4:].strip() for b in body if b.startswith("E   ")]
                detail = "\n".join(e_lines[:6]) or msg or (body[-1] if body else tag)
                break
            if tag == "skipped":
                status, detail = "skip", child.get("message") or ""
        run.add(unit, name, status, detail)
    return run


def parse(path):
    return parse_junit(path) if path.endswith(".xml") else parse_tcl(path)


def load_exclusions(path):
    rules = []
    if not path:
        return rules
    try:
        with open(path, encoding="utf-8") as f:
            for n, raw in enumerate(f, 1):
                line = raw.rstrip("\n")
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                pattern, sep, reason = line.rpartition(" # ")
                if not sep:
                    print(f"{path}:{n}: no ' # reason' on this line", file=sys.stderr)
                    sys.exit(2)
                unit = None
                if ":: " in pattern:
                    unit, _, pattern = pattern.partition(":: ")
                pattern = pattern.strip()
                rx = None
                if pattern.startswith("/"):
                    try:
                        rx = re.compile(pattern[1:])
                    except re.error as e:
                        print(f"{path}:{n}: bad regular expression: {e}", file=sys.stderr)
                        sys.exit(2)
                rules.append(
                    {"line": n, "unit": unit, "pattern": pattern, "rx": rx,
                     "reason": reason.strip(), "used": 0}
                )
    except FileNotFoundError:
        pass
    return rules


def excluded(rules, unit, name):
    for r in rules:
        if r["unit"] is not None and r["unit"] != unit:
            continue
        if (r["rx"].search(name) if r["rx"] else r["pattern"] == name):
            r["used"] += 1
            return r
    return None


def test_label(key):
    """`unit: name`, with `(#n)` for the n-th test of that name in its unit."""
    unit, name, occ = key
    suffix = f" (#{occ})" if occ > 1 else ""
    return f"{unit}: {name}{suffix}"


def first_line(text, limit=300):
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:limit]
    return ""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("direct")
    ap.add_argument("statecar")
    ap.add_argument("--exclusions", help="exclusions file (NAME # reason per line)")
    ap.add_argument("--json", help="also write the comparison as JSON to this file")
    ap.add_argument("--label", default="statecar", help="name of the second run in the output")
    args = ap.parse_args()

    direct, through = parse(args.direct), parse(args.statecar)
    rules = load_exclusions(args.exclusions)

    direct_ok = [k for k, r in direct.results.items() if r.status == "ok"]
    both_ok = [k for k in direct_ok if k in through.results and through.results[k].status == "ok"]
    lost, lost_excluded = [], []
    for k in direct_ok:
        r = through.results.get(k)
        if r is not None and r.status == "ok":
            continue
        unit, name, occ = k
        if r is None:
            why = through.unit_trouble.get(unit)
            text = f"never ran: {first_line(why)}" if why else "never ran (its unit ended first)"
            entry = (k, "not-run", text)
        else:
            entry = (k, r.status, r.detail)
        rule = excluded(rules, unit, name)
        (lost_excluded if rule else lost).append((entry, rule))
    gained = [
        k for k, r in through.results.items()
        if r.status == "ok" and (k not in direct.results or direct.results[k].status != "ok")
    ]

    label = args.label
    n_direct, n_both = len(direct_ok), len(both_ok)
    ratio = (100.0 * n_both / n_direct) if n_direct else 0.0
    excl = len(lost_excluded)
    with_excl = (100.0 * (n_both + excl) / n_direct) if n_direct else 0.0
    print(f"direct:   {direct.path}")
    print(f"{label + ':':9} {through.path}")
    print(
        f"direct:   {n_direct} passed, {direct.count('err')} failed, "
        f"{len(direct.unit_trouble)} units aborted"
    )
    print(
        f"{label + ':':9} {through.count('ok')} passed, {through.count('err')} failed, "
        f"{len(through.unit_trouble)} units aborted"
    )
    print(
        f"of the {n_direct} tests that pass directly, {n_both} pass through {label} "
        f"({ratio:.2f}%); {len(lost)} fail unexpectedly, {excl} fail as listed in the "
        f"exclusions ({with_excl:.2f}% with them)"
    )
    if through.unit_trouble:
        print(f"\nunits that did not finish cleanly through {label}:")
        for unit, why in through.unit_trouble.items():
            print(f"  {unit}: {first_line(why)}")
    if direct.unit_trouble:
        print("\nunits that did not finish cleanly directly:")
        for unit, why in direct.unit_trouble.items():
            print(f"  {unit}: {first_line(why)}")
    if lost:
        print(f"\npass directly, fail through {label} ({len(lost)}):")
        for (k, status, detail), _ in lost:
            print(f"  [{status}] {test_label(k)}")
            if detail:
                print(f"        {first_line(detail)}")
    if lost_excluded:
        print(f"\nexcluded (tests/redis-suite exclusions, reasons in docs/DESIGN.md) ({excl}):")
        for (k, status, detail), rule in lost_excluded:
            print(f"  [{status}] {test_label(k)} -- {rule['reason']}")
    stale = [r for r in rules if not r["used"]]
    if stale and rules:
        print("\nexclusions that matched nothing in this run (expected when their unit or tag did not run):")
        for r in stale:
            print(f"  line {r['line']}: {r['pattern']}")
    if gained:
        print(f"\npass through {label} but not directly ({len(gained)}):")
        for unit, name, occ in gained:
            print(f"  {unit}: {name}")
    # The closing line, in the plain form any CI log reader understands.
    print(f"\n{label}: {n_both} passed, {len(lost)} failed, {excl} skipped")

    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "direct_passed": n_direct,
                    "direct_failed": direct.count("err"),
                    "through_passed": through.count("ok"),
                    "through_failed": through.count("err"),
                    "both_passed": n_both,
                    "ratio_percent": round(ratio, 2),
                    "excluded": excl,
                    "lost": [
                        {"unit": k[0], "name": k[1], "occurrence": k[2], "status": s, "detail": d}
                        for (k, s, d), _ in lost
                    ],
                    "excluded_tests": [
                        {"unit": k[0], "name": k[1], "occurrence": k[2], "status": s,
                         "detail": d, "reason": rule["reason"]}
                        for (k, s, d), rule in lost_excluded
                    ],
                    "units_aborted": through.unit_trouble,
                },
                f,
                indent=1,
            )
    return 1 if lost else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # piped into head
        sys.exit(1)
