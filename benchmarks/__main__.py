"""``python -m benchmarks``: the experiment runner (see ``benchmarks/experiments/README.md``).

python -m benchmarks run NAME [--seeds 0 1 2] [--workers N] [--device cpu] [--quick] [--reuse OTHER.json ...] [--arms A ...] [--tasks T ...]
python -m benchmarks render [RESULTS.json ...]      # re-draw .md/.png from the JSON alone (default: all)
python -m benchmarks readme                          # regenerate README's "Which method wins where" block
python -m benchmarks template AGENT                  # a complete learner table with today's defaults
python -m benchmarks list                            # the experiment files
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from agents.common.cli import run_cli
from benchmarks.report import regenerate_readme, render_files, runner_results
from benchmarks.runner import (
    EXPERIMENTS_DIR,
    RESULTS_DIR,
    ExperimentError,
    run_experiment,
    template,
)

README = Path(__file__).resolve().parents[1] / "README.md"


def main(argv: list) -> int:
    """The subcommands; a user error raises (``run_cli`` prints it as one ``error:`` line, exit status 2)."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run or resume an experiment")
    r.add_argument("name", help="experiment: benchmarks/experiments/NAME.toml (or a path to a .toml)")
    r.add_argument("--seeds", type=int, nargs="+", default=None, help="override the file's seeds")
    r.add_argument("--workers", type=int, default=1, help="cells at a time (processes, 1 torch thread each)")
    r.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    r.add_argument("--quick", action="store_true", help="the file's [quick] budget; writes NAME-quick.*")
    r.add_argument("--out-dir", default=str(RESULTS_DIR))
    r.add_argument("--scratch", default="runs/bench", help="run directories (checkpoints), git-ignored")
    r.add_argument(
        "--reuse",
        nargs="+",
        default=[],
        metavar="RESULTS.json",
        help="copy the cells of these results files that are identical computations (same task, seed, model, "
        "evaluation, base and arm config) instead of running them; the other run's base checkpoints must be "
        "reachable at their recorded paths",
    )
    r.add_argument(
        "--arms", nargs="+", default=None, help="run only these arms now (and the bases they need); others stay missing"
    )
    r.add_argument("--tasks", nargs="+", default=None, help="run only these tasks now; others stay missing")
    g = sub.add_parser("render", help="re-draw Markdown and plots from results JSON")
    g.add_argument("files", nargs="*")
    g.add_argument("--no-png", action="store_true")
    sub.add_parser("readme", help="regenerate the README's generated block from the results JSON")
    t = sub.add_parser("template", help="print a complete learner table with the current defaults")
    t.add_argument("agent")
    sub.add_parser("list", help="list the experiment files")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        run_experiment(
            args.name,
            seeds=args.seeds,
            workers=args.workers,
            device=args.device,
            quick=args.quick,
            out_dir=Path(args.out_dir),
            scratch=Path(args.scratch),
            command="python -m benchmarks " + shlex.join(argv),
            reuse=args.reuse,
            arms=args.arms,
            tasks=args.tasks,
        )
    elif args.cmd == "render":
        for f in args.files or runner_results(RESULTS_DIR):
            print(render_files(Path(f), png=not args.no_png))
    elif args.cmd == "readme":
        README.write_text(regenerate_readme(README.read_text(), RESULTS_DIR))
        print(f"updated {README}")
    elif args.cmd == "template":
        print(template(args.agent), end="")
    elif args.cmd == "list":
        for p in sorted(EXPERIMENTS_DIR.glob("*.toml")):
            print(p.stem)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, extra_errors=(ExperimentError, FileNotFoundError)))
