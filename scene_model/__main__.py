"""`python -m scene_model train|export|evaluate|phrasings|samples`: make and check the model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers.utils import logging as transformers_logging

# Before the imports below: importing diffusers' pipelines makes transformers warn that
# torchvision is missing, for image processors this model never uses; not for a user to act on.
# Loading the default model takes a fraction of a second: its progress bars would only clutter
# the stages' own.
transformers_logging.set_verbosity_error()
transformers_logging.disable_progress_bar()

from . import evaluation, phrasings, training  # noqa: E402

WORK = Path(".cache/scene-model")
MODEL = Path("models/default")
REPORT = Path("models/default-evaluation.json")
PHRASINGS_REPORT = Path("models/default-phrasings.json")
SAMPLES = Path("docs/samples.png")


def _load(model: Path):
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    return DiffusionPipeline.from_pretrained(model)


def evaluate(model: Path, count: int, report_path: Path) -> int:
    report = evaluation.evaluate(_load(model), count=count)
    evaluation.write_report(report, report_path)
    print(report.markdown())
    failed = [name for name, ok in report.passed().items() if not ok]
    print(f"report: {report_path}" + (f"; below target: {', '.join(failed)}" if failed else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scene_model", description=__doc__)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train", help="train (or resume) every stage, export the model, evaluate it"
    )
    train.add_argument("--work", type=Path, default=WORK, help="checkpoints (default %(default)s)")
    train.add_argument("--out", type=Path, default=MODEL, help="model folder (default %(default)s)")
    train.add_argument(
        "--from",
        dest="start",
        type=Path,
        help="a stage-4 export (a model folder) to take stages 1-4 from; only stage 5 runs",
    )
    export = commands.add_parser("export", help="write the latest checkpoint as a diffusers folder")
    export.add_argument("--work", type=Path, default=WORK)
    export.add_argument("--out", type=Path, default=MODEL)
    check = commands.add_parser("evaluate", help="measure a model on held-out prompts")
    check.add_argument("--model", type=Path, default=MODEL)
    check.add_argument("--prompts", type=int, default=250)
    check.add_argument("--report", type=Path, default=REPORT)
    phrased = commands.add_parser(
        "phrasings", help="measure a model on ordinary phrasings outside its training grammar"
    )
    phrased.add_argument("--model", type=Path, default=MODEL)
    phrased.add_argument("--prompts", type=int, default=phrasings.PROMPTS_PER_FAMILY)
    phrased.add_argument("--family", action="append", choices=[phrasings.SEEN, *phrasings.FAMILIES])
    phrased.add_argument("--report", type=Path, default=PHRASINGS_REPORT)
    samples = commands.add_parser("samples", help="draw the README's sample grid")
    samples.add_argument("--model", type=Path, default=MODEL)
    samples.add_argument("--out", type=Path, default=SAMPLES)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.command == "train":
        training.train(args.work, training.Plan(), args.start)
    if args.command in ("train", "export"):
        step = training.export(args.work, args.out, training.Plan())
        print(f"model after {step} phrasing steps written to {args.out}")
    if args.command == "train":
        return evaluate(args.out, 250, REPORT)
    if args.command == "evaluate":
        return evaluate(args.model, args.prompts, args.report)
    if args.command == "phrasings":
        report = phrasings.evaluate_phrasings(
            _load(args.model), args.prompts, families=args.family, progress=print
        )
        phrasings.write_report(report, args.report)
        print(report.markdown())
        print(f"report: {args.report}")
    if args.command == "samples":
        prompts = evaluation.sample_grid(_load(args.model), args.out)
        print(f"{args.out}: " + json.dumps(prompts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
