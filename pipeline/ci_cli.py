"""The CI subcommands of ``python -m pipeline``: gate, baseline, compare.

Kept apart from the stage commands so the CLI module only wires them in::

    add_ci_commands(sub)               # in build_parser(), on the subparsers object
    code = run_ci_command(args)        # first thing in dispatch; None means "not a CI command"

Exit codes: 0 ok / gate passed, 1 gate failed (a regression, a missing or incomparable metric),
2 unusable input (raised as InputError; the CLI's main prints it and exits 2).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from distill.atomic import write_json, write_text

CI_COMMANDS = ("gate", "baseline", "compare")

GATE_EPILOG = """\
A baseline row is matched by artifact name + target (+ measured_on). Every rule is one JUnit test case.
A metric that is missing, not computable (e.g. TAR with too few negative pairs) or measured on another
device than the baseline's fails, naming the reason; result rows the baseline does not know are listed
as "not gated". Baseline format: see `pydoc pipeline.gate`.

examples:
  python -m pipeline gate --results runs/ci/results.json --baseline baselines/host.json \\
      --junit reports/gate.xml --markdown reports/gate.md

exit codes: 0 every rule holds, 1 a rule failed, 2 unusable input (missing/malformed file, wrong target).
"""

BASELINE_EPILOG = """\
Default tolerances: accuracy drop <= max(0.5 pts, 0.5 x 10-fold std, 2 binomial sd on the set's pairs);
the verification sets (name, pairs, hash) are recorded and a run on other sets is refused; TAR@FAR drop
<= 2 pts where computable; latency p50 +25 % (only rows with a real measurement, tied to their
measured_on); size +5 %.
Commit the file and review it like code: it is what "worse" means for CI.

examples:
  python -m pipeline baseline --results runs/ci/results.json --out baselines/host.json
  python -m pipeline baseline --results runs/ci --out baselines/host.json --no-latency --accuracy-floor 0.9
"""

COMPARE_EPILOG = """\
Shows every metric of every artifact x target (accuracy, TAR@FAR, latency p50/p90/p99, size, hashes),
rows added or removed, and the config values, stage keys and tool versions that differ.

examples:
  python -m pipeline compare runs/main runs/my-branch
  python -m pipeline compare runs/main runs/my-branch --json > diff.json
"""


def add_ci_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``gate``, ``baseline`` and ``compare`` to the ``python -m pipeline`` subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    g = sub.add_parser(
        "gate",
        help="check a run's results against a committed baseline (exit 1 on any regression)",
        description="Check results.json against a baseline's per-metric rules: accuracy and TAR@FAR "
        "floors / maximum drops, maximum latency increase on the same device, maximum size.",
        epilog=GATE_EPILOG,
        formatter_class=fmt,
    )
    g.add_argument("--results", required=True, help="results.json, or a run folder holding one")
    g.add_argument(
        "--baseline", required=True, help="baseline JSON (written by `python -m pipeline baseline`)"
    )
    g.add_argument("--junit", metavar="PATH", help="also write JUnit XML: one test case per rule")
    g.add_argument(
        "--markdown",
        metavar="PATH",
        help="also write a markdown summary (pull-request comment). Independently of this flag, the "
        "summary is appended to $GITHUB_STEP_SUMMARY when that variable is set",
    )
    g.add_argument(
        "--no-step-summary", action="store_true", help="do not append to $GITHUB_STEP_SUMMARY even if set"
    )

    b = sub.add_parser(
        "baseline",
        help="write a gate baseline from a run's results, with default tolerances, for review in a PR",
        description="Write a baseline file gating every row of a run at its current values.",
        epilog=BASELINE_EPILOG,
        formatter_class=fmt,
    )
    b.add_argument("--results", required=True, help="results.json, or a run folder holding one")
    b.add_argument("--out", required=True, help="baseline file to write, e.g. baselines/host.json")
    b.add_argument(
        "--accuracy-max-drop", type=float, default=0.005, help="allowed accuracy drop, 0..1 [default: 0.005]"
    )
    b.add_argument(
        "--accuracy-std-k",
        type=float,
        default=0.5,
        help="also allow a drop of K x the baseline's 10-fold accuracy std; 0 disables [default: 0.5]",
    )
    b.add_argument(
        "--accuracy-binomial-k",
        type=float,
        default=2.0,
        help="also allow a drop of K binomial standard deviations of an accuracy on the set's pair count, "
        "sqrt(p(1-p)/pairs); 0 disables [default: 2]",
    )
    b.add_argument("--accuracy-floor", type=float, help="absolute accuracy floor for every row, 0..1")
    b.add_argument(
        "--tar-max-drop", type=float, default=0.02, help="allowed TAR@FAR drop, 0..1 [default: 0.02]"
    )
    b.add_argument("--tar-floor", type=float, help="absolute TAR floor for every computable FAR, 0..1")
    b.add_argument(
        "--latency-max-increase-pct",
        type=float,
        default=25.0,
        help="allowed latency increase in percent, same measured_on only [default: 25]",
    )
    b.add_argument(
        "--latency-percentiles",
        default="p50",
        help="comma-separated latency percentiles to gate (p50,p90,p99,mean) [default: p50]",
    )
    b.add_argument("--no-latency", action="store_true", help="write no latency rules (noisy CI runners)")
    b.add_argument(
        "--size-max-increase-pct",
        type=float,
        default=5.0,
        help="allowed size increase in percent [default: 5]",
    )

    c = sub.add_parser(
        "compare",
        help="show what changed between two run folders, metric by metric",
        description="Compare two runs: metrics per artifact x target, rows added/removed, and the "
        "config, stage keys and versions that differ.",
        epilog=COMPARE_EPILOG,
        formatter_class=fmt,
    )
    c.add_argument("run_a", help="first run folder (or its results.json): A")
    c.add_argument("run_b", help="second run folder (or its results.json): B")
    c.add_argument("--json", action="store_true", help="print the changes as JSON (a list of objects)")


def run_ci_command(args: argparse.Namespace) -> int | None:
    """Run a CI command and return its exit code; None when ``args.command`` is not one of them.

    InputError propagates (the CLI's main turns it into ``error: ...`` and exit code 2).
    """
    command = getattr(args, "command", None)
    if command == "gate":
        return _gate(args)
    if command == "baseline":
        return _baseline(args)
    if command == "compare":
        return _compare(args)
    return None


def verify_artifact_hashes(results: dict) -> None:
    """Refuse results whose files changed after they were measured (a swapped artifact must not pass).

    Rows whose file is not present here (results copied elsewhere) are gated on their numbers alone.
    """
    from distill.errors import InputError
    from pipeline.runfolder import sha256_file

    for row in results.get("rows", []):
        path, digest = row.get("path"), row.get("sha256")
        if path and digest and Path(path).is_file() and sha256_file(Path(path)) != digest:
            raise InputError(
                f"{path}: sha256 does not match results.json (file changed after it was measured)"
            )


def _gate(args: argparse.Namespace) -> int:
    from pipeline.gate import exit_code, format_table, gate, junit_xml, load_json_file, markdown_summary

    results = load_json_file(args.results, "results")
    baseline = load_json_file(args.baseline, "baseline")
    verify_artifact_hashes(results)
    report = gate(results, baseline)
    print(format_table(report), end="")
    if args.junit:
        write_text(args.junit, junit_xml(report))
    summary = markdown_summary(report)
    if args.markdown:
        write_text(args.markdown, summary)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary and not args.no_step_summary:
        _append(Path(step_summary), summary)
    return exit_code(report)


def _append(path: Path, text: str) -> None:
    """Append by rewriting atomically: a crash never leaves a half-written summary."""
    before = path.read_text() if path.is_file() else ""
    sep = "\n" if before and not before.endswith("\n") else ""
    write_text(path, before + sep + text)


def _baseline(args: argparse.Namespace) -> int:
    from distill.errors import InputError
    from pipeline.baseline import Tolerances, make_baseline, summarize
    from pipeline.gate import load_json_file

    percentiles = tuple(p.strip() for p in args.latency_percentiles.split(",") if p.strip())
    if not percentiles and not args.no_latency:
        raise InputError("--latency-percentiles: name at least one percentile (or use --no-latency)")
    tol = Tolerances(
        accuracy_max_drop=args.accuracy_max_drop,
        accuracy_std_k=args.accuracy_std_k,
        accuracy_binomial_k=args.accuracy_binomial_k,
        accuracy_floor=args.accuracy_floor,
        tar_max_drop=args.tar_max_drop,
        tar_floor=args.tar_floor,
        latency_max_increase_pct=args.latency_max_increase_pct,
        latency_percentiles=percentiles or ("p50",),
        latency=not args.no_latency,
        size_max_increase_pct=args.size_max_increase_pct,
    )
    baseline = make_baseline(load_json_file(args.results, "results"), tol)
    write_json(args.out, baseline)
    print(summarize(baseline))
    print(f"baseline: {args.out} ({len(baseline['rows'])} rows); review and commit it")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from pipeline.compare import changes_json, compare_runs, format_compare

    changes = compare_runs(Path(args.run_a), Path(args.run_b))
    if args.json:
        sys.stdout.write(changes_json(changes))
    else:
        sys.stdout.write(format_compare(changes, args.run_a, args.run_b))
    return 0
