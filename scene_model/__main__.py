"""`python -m scene_model train|export|evaluate|phrasings|samples|adapter|adapters-check|
adapter-samples`: make and check the model and its style adapters."""

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

from . import adapters, evaluation, phrasings, training  # noqa: E402

WORK = Path(".cache/scene-model")
MODEL = Path("models/default")
REPORT = Path("models/default-evaluation.json")
PHRASINGS_REPORT = Path("models/default-phrasings.json")
SAMPLES = Path("docs/samples.png")
ADAPTER_WORK = Path(".cache/adapters")
LORAS = MODEL / "loras"
ADAPTER_SAMPLES = Path("docs/adapters.png")


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
    adapter = commands.add_parser(
        "adapter", help="train (or resume) a style adapter (a LoRA) and save it in the model folder"
    )
    adapter.add_argument("style", choices=list(adapters.STYLES))
    adapter.add_argument("--model", type=Path, default=MODEL)
    adapter.add_argument("--out", type=Path, help=f"default {LORAS}/STYLE")
    adapter.add_argument("--work", type=Path, default=ADAPTER_WORK)
    adapter.add_argument("--steps", type=int, default=adapters.Recipe().steps)
    adapter.add_argument("--threads", type=int, dest="adapter_threads", help="torch threads")
    adapter.add_argument(
        "--init", type=Path, help="a saved adapter's folder to start from: train it on further"
    )
    checked = commands.add_parser(
        "adapters-check", help="judge every adapter's pictures, and the model's without them"
    )
    checked.add_argument("--model", type=Path, default=MODEL)
    checked.add_argument("--loras", type=Path, default=LORAS)
    checked.add_argument("--prompts", type=int, default=20)
    pictured = commands.add_parser("adapter-samples", help="draw the adapters' sample grid")
    pictured.add_argument("--model", type=Path, default=MODEL)
    pictured.add_argument("--loras", type=Path, default=LORAS)
    pictured.add_argument("--out", type=Path, default=ADAPTER_SAMPLES)
    args = parser.parse_args(argv)
    if getattr(args, "adapter_threads", None):
        args.threads = args.adapter_threads
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
    if args.command == "adapter":
        out = args.out or LORAS / args.style
        command = " ".join(["python -m scene_model", *(argv if argv is not None else sys.argv[1:])])
        info = adapters.train_adapter(
            args.style,
            args.model,
            out,
            args.work,
            adapters.Recipe(steps=args.steps),
            command,
            log=lambda line: print(line, flush=True),
            init=args.init,
        )
        print(f"{out}: " + json.dumps(info))
    if args.command == "adapters-check":
        table = adapters.check(_load(args.model), args.loras, args.prompts)
        print(adapters.markdown(table, args.prompts))
    if args.command == "adapter-samples":
        adapters.sample_grid(_load(args.model), args.loras, args.out)
        print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
