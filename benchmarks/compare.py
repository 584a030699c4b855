"""actorz, Ray and xoscar side by side: ``python benchmarks/compare.py``.

Runs the benchmark cases on each framework that is installed, one after the other in
one run, each in its own subprocess (``python -m actorz.bench``,
``benchmarks/ray_bench.py``, ``benchmarks/xoscar_bench.py``), then prints one table with
the ratios actorz/Ray and actorz/xoscar and whether the issue's targets hold.
``--markdown FILE`` writes the table (with the machine, the load and the command) for
BENCHMARKS.md. ``--interleave`` runs case by case, each framework in turn, so that a
change of load on a shared machine hits all three alike (slower: a start-up per case).

Ray and xoscar are benchmark-only dependencies (``pip install -e '.[bench]'``); they can
also live in another environment: ``--ray-python`` / ``--xoscar-python``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
FRAMEWORKS = ("actorz", "ray", "xoscar")
LOWER_IS_BETTER = {"p50 us", "p99 us", "MiB"}

#: The issue's targets: (minimum actorz/Ray ratio, must beat xoscar, absolute bound).
TARGETS: dict[str, tuple[float | None, bool, float | None]] = {
    "1:1 actor calls sync": (3.5, True, None),
    "1:1 actor calls async": (10, False, None),
    "1:1 async-actor calls sync": (6.5, True, None),
    "1:1 async-actor calls async": (10, False, None),
    "1:1 async-actor calls with args async": (6, False, None),
    "n:n actor calls async": (6, False, None),
    "single client tasks async": (8, False, None),
    "actor creation": (20, False, None),
    "idle actor process memory (USS)": (None, False, 10.0),
    "64MiB value round trips": (1, False, None),
}


def command(framework: str, python: str) -> list[str]:
    if framework == "actorz":
        return [python, "-m", "actorz.bench"]
    return [python, str(HERE / f"{framework}_bench.py")]


def available(framework: str, python: str) -> bool:
    module = {"actorz": "actorz", "ray": "ray", "xoscar": "xoscar"}[framework]
    return subprocess.run([python, "-c", f"import {module}, actorz"], cwd=ROOT,
                          capture_output=True, check=False).returncode == 0


def run_one(framework: str, python: str, cases: list[str] | None, duration: float,
            extra: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = command(framework, python) + ["--duration", str(duration), "--json", str(out)]
        for c in cases or ():
            cmd += ["--cases", c]
        cmd += extra
        print(f"## {framework}: {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        proc = subprocess.run(cmd, cwd=ROOT, env=env, check=False)
        if proc.returncode != 0 or not out.exists():
            print(f"## {framework}: exited with code {proc.returncode}", flush=True)
            return {"framework": framework, "results": [], "failed": {"*": "exited"}}
        doc: dict[str, Any] = json.loads(out.read_text())
        return doc


def merge(into: dict[str, Any], doc: dict[str, Any]) -> None:
    if not into:
        into.update(doc)
        into["loads"] = []
    else:
        into["results"] += doc["results"]
        into.get("failed", {}).update(doc.get("failed", {}))
    into["loads"].append((doc.get("machine", {}).get("loadavg"), doc.get("load_after")))


def table(docs: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    values: dict[str, dict[tuple[str, str], tuple[float, float]]] = {}
    order: list[tuple[str, str]] = []
    for fw, doc in docs.items():
        for r in doc.get("results", []):
            key = (r["name"], r["unit"])
            values.setdefault(fw, {})[key] = (r["mean"], r["std"])
            if key not in order:
                order.append(key)
    present = [fw for fw in FRAMEWORKS if fw in docs]
    head = ["case", "unit"]
    for fw in present:
        head.append(_label(fw))
        if fw != "actorz" and "actorz" in present:
            head.append(f"actorz/{_label(fw)}")
    if "actorz" in present and len(present) > 1:
        head.append("target")
    rows = []
    for key in order:
        name, unit = key
        a = values.get("actorz", {}).get(key)
        row = [name, unit + (" (lower is better)" if unit in LOWER_IS_BETTER else "")]
        for fw in present:
            v = values.get(fw, {}).get(key)
            row.append(_num(v))
            if fw != "actorz" and "actorz" in present:
                row.append(f"{a[0] / v[0]:.2f}x" if a and v and v[0] else "-")
        if "actorz" in present and len(present) > 1:
            row.append(_target(key, values))
        rows.append(row)
    return head, rows


def _label(fw: str) -> str:
    return {"ray": "Ray", "xoscar": "xoscar"}.get(fw, fw)


def _num(v: tuple[float, float] | None) -> str:
    if v is None:
        return "-"
    mean, std = v
    if mean >= 100:
        return f"{mean:,.0f} ± {std:,.0f}"
    return f"{mean:,.2f} ± {std:,.2f}"


def _target(key: tuple[str, str], values: dict[str, Any]) -> str:
    name, unit = key
    if name not in TARGETS:
        return ""
    vs_ray, beat_xoscar, bound = TARGETS[name]
    a = values.get("actorz", {}).get(key)
    if a is None:
        return ""
    wants, ok = [], True
    if bound is not None:
        wants.append(f"≤ {bound:g} {unit}")
        ok = ok and a[0] <= bound
    ray = values.get("ray", {}).get(key)
    if vs_ray is not None:
        wants.append(f"≥ {vs_ray:g}x Ray")
        if ray is None:
            return "? (" + ", ".join(wants) + ")"
        ok = ok and a[0] >= vs_ray * ray[0]
    xo = values.get("xoscar", {}).get(key)
    if beat_xoscar and xo is not None:
        wants.append("> xoscar")
        ok = ok and a[0] > xo[0]
    return ("met" if ok else "NOT met") + " (" + ", ".join(wants) + ")"


def render(head: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))]
                     + [fmt.format(*r) for r in rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/compare.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                   help="comma-separated subset of actorz,ray,xoscar (default: all installed)")
    p.add_argument("--cases", action="append", metavar="PATTERN")
    p.add_argument("--duration", type=float, default=4.5, metavar="SECONDS",
                   help="time per case and framework (9 is Ray's own timing)")
    p.add_argument("--interleave", action="store_true",
                   help="case by case, each framework in turn (fairer under changing load)")
    p.add_argument("--python", default=sys.executable, help="interpreter for actorz")
    p.add_argument("--ray-python", default=None, help="interpreter with ray (default: --python)")
    p.add_argument("--xoscar-python", default=None,
                   help="interpreter with xoscar (default: --python)")
    p.add_argument("--markdown", metavar="FILE", help="write the table as markdown")
    p.add_argument("--json", metavar="FILE", help="write every framework's results as JSON")
    args = p.parse_args(argv)

    pythons = {"actorz": args.python, "ray": args.ray_python or args.python,
               "xoscar": args.xoscar_python or args.python}
    wanted = [fw.strip() for fw in args.frameworks.split(",") if fw.strip()]
    frameworks = []
    for fw in wanted:
        if fw not in FRAMEWORKS:
            p.error(f"unknown framework {fw!r}")
        if available(fw, pythons[fw]):
            frameworks.append(fw)
        else:
            print(f"## {fw}: not installed for {pythons[fw]}; skipped", flush=True)
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    docs: dict[str, dict[str, Any]] = {fw: {} for fw in frameworks}
    if args.interleave:
        names = {fw: _case_names(fw, pythons[fw], args.cases) for fw in frameworks}
        for name in names.get("actorz") or next(iter(names.values()), []):
            for fw in frameworks:
                if name in names[fw]:
                    merge(docs[fw], run_one(fw, pythons[fw], ["^" + re.escape(name) + "$"],
                                            args.duration, []))
    else:
        for fw in frameworks:
            merge(docs[fw], run_one(fw, pythons[fw], args.cases, args.duration, []))
    docs = {fw: d for fw, d in docs.items() if d}
    head, rows = table(docs)
    print()
    print(render(head, rows, markdown=False))
    for fw, doc in docs.items():
        for name, why in doc.get("failed", {}).items():
            print(f"## {fw}: {name} failed: {why}")
    if args.json:
        Path(args.json).write_text(json.dumps(docs, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(_markdown(docs, head, rows, started, argv) + "\n")
        print(f"## wrote {args.markdown}")
    return 0


def _case_names(framework: str, python: str, patterns: list[str] | None) -> list[str]:
    cmd = command(framework, python) + ["--list"]
    for c in patterns or ():
        cmd += ["--cases", c]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line and not line.startswith("#")]


def _markdown(docs: dict[str, dict[str, Any]], head: list[str], rows: list[list[str]],
              started: str, argv: list[str] | None) -> str:
    any_doc = next(iter(docs.values()))
    m = any_doc.get("machine", {})
    lines = [
        (f"Measured {started} on {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
         f"{m.get('system', '?')}, Python {m.get('python', '?')}."),
        "",
    ]
    for fw, doc in docs.items():
        ones = [x[0] for pair in doc.get("loads", []) for x in pair if x]
        load = f"{min(ones):.2f} to {max(ones):.2f}" if ones else "?"
        lines.append(f"- {_label(fw)} {doc.get('version', '?')}: 1-minute load average "
                     f"{load} while it ran ({len(doc.get('loads', []))} run(s))")
    rev = _git_revision()
    if rev:
        lines.append(f"- actorz source: {rev}")
    args = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    lines += ["", "Reproduce: `python benchmarks/compare.py " + args + "`", "",
              render(head, rows, markdown=True)]
    return "\n".join(lines)


def _git_revision() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, text=True, capture_output=True,
                               check=False).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return f"commit {head}" + (" plus uncommitted changes" if dirty else "")


if __name__ == "__main__":
    sys.exit(main())
