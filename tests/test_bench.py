"""The benchmark runs and its output parses; no test here asserts a speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from actorz import bench

ROOT = Path(__file__).resolve().parent.parent


def test_result_lines_round_trip_through_the_parser() -> None:
    for r in (bench.Result("1:1 actor calls sync", 8123.456, 101.2),
              bench.Result("await ref latency", 120.5, 3.25, unit="p99 us"),
              bench.Result("idle actor process memory (USS)", 9.5, 0.0, unit="MiB")):
        assert bench.parse_line(r.line()) == (r.name, r.unit, round(r.mean, 2),
                                              round(r.std, 2))


def test_the_parser_reads_rays_own_output_format() -> None:
    assert bench.parse_line("1:1 actor calls async per second 7566.18 +- 1036.7") == (
        "1:1 actor calls async", "per second", 7566.18, 1036.7)
    assert bench.parse_line("# actorz 0.1.0, load 1.0") is None
    assert bench.parse_line("Tip: set TESTS_TO_RUN='pattern'") is None


def test_cases_are_selected_by_substring_or_regex() -> None:
    names = [n for n, _ in bench.CASES]
    assert [n for n, _ in bench.select(bench.CASES, ["1:1 actor calls sync"])] == [
        "1:1 actor calls sync"]
    assert [n for n, _ in bench.select(bench.CASES, [r"^n:n .*async$"])] == [
        n for n in names if n.startswith("n:n ")]
    assert [n for n, _ in bench.select(bench.CASES, ["(USS)"])] == [
        "idle actor process memory (USS)"]
    assert bench.select(bench.CASES, None) == bench.CASES


def test_every_case_of_rays_microbenchmark_is_there() -> None:
    names = {n for n, _ in bench.CASES}
    assert {
        "1:1 actor calls sync", "1:1 actor calls async", "1:1 actor calls concurrent",
        "1:n actor calls async", "n:n actor calls async", "n:n actor calls with arg async",
        "1:1 async-actor calls sync", "1:1 async-actor calls async",
        "1:1 async-actor calls with args async", "1:n async-actor calls async",
        "n:n async-actor calls async", "single client tasks sync",
        "single client tasks async", "multi client tasks async", "actor creation",
        "64MiB value round trips", "await ref latency", "idle actor process memory (USS)",
    } <= names


@pytest.mark.timeout(60)
def test_python_m_actorz_bench_runs_a_case_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "actorz.bench", "--cases", "1:1 actor calls sync",
         "--duration", "0.5", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=50, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line and not line.startswith("#")]
    parsed = [bench.parse_line(line) for line in lines]
    assert parsed and None not in parsed, proc.stdout
    assert [(p[0], p[1]) for p in parsed if p] == [("1:1 actor calls sync", "per second")]
    assert all(p[2] > 0 for p in parsed if p)
    doc = json.loads(out.read_text())
    assert doc["framework"] == "actorz"
    assert [(r["name"], r["unit"]) for r in doc["results"]] == [
        ("1:1 actor calls sync", "per second")]
    assert doc["results"][0]["mean"] > 0
    assert doc["failed"] == {}
