"""`retrv train`: one command per stage; every flag comes from the stage's config dataclass (TRL style).

Each field of a config (`retrv.train.config.describe`) becomes `--field-name` with the field's help text and
default, so the dataclass is the only place a training option is declared. The command builds the config,
runs the stage with a progress bar on stderr, and prints the output path (or `--json`) on stdout.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

from retrv.cli.common import handle_errors, print_json, progress_bar, silence_library, stderr_console
from retrv.train.config import EncoderTrainConfig, describe
from retrv.train.cot import CotConfig
from retrv.train.grpo import GrpoTrainConfig
from retrv.train.icm import IcmTrainConfig
from retrv.train.pretrain import PretrainConfig
from retrv.train.sft import SftTrainConfig

app = typer.Typer(
    help="Train retrv's models: the encoder, and the reasoner in stages (icm -> sft -> grpo).", no_args_is_help=True
)

_SCALARS: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}


def _python_type(annotation: str) -> Any:
    """'int' -> int, 'str | None' -> Optional[str] (annotations are strings under `from __future__`)."""
    names = [part.strip() for part in annotation.split("|")]
    scalar = _SCALARS.get(next((n for n in names if n != "None"), "str"), str)
    return Optional[scalar] if "None" in names else scalar  # noqa: UP045 (typer reads the typing form)


def config_parameters(config_cls: type) -> list[inspect.Parameter]:
    """One keyword parameter per config field, annotated with its typer Option (flag, help, default)."""
    params = []
    for f in describe(config_cls):
        kind = _python_type(f.type)
        flag = f"{f.flag}/--no-{f.flag[2:]}" if kind is bool else f.flag  # booleans switch both ways
        option = typer.Option(flag, help=f.help, show_default=not f.required)
        default = inspect.Parameter.empty if f.required else f.default
        params.append(
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, option]
            )
        )
    return params


_OUTPUT_OPTIONS = [
    inspect.Parameter(
        "json_out",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")],
    ),
    inspect.Parameter(
        "quiet",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary on stderr.")],
    ),
]


def _report(kind: str, summary: Any, json_out: bool, quiet: bool) -> None:
    issues = list(getattr(summary, "data_issues", []) or [])
    if json_out:
        data = {k: v for k, v in vars(summary).items() if k != "data_issues"}
        print_json({"schema": f"retrv.train.{kind}/1", **data, "skipped": [str(i) for i in issues]})
    if not quiet:
        console = stderr_console()
        for issue in issues:
            console.print(f"skipped {issue}", markup=False, soft_wrap=True)
        if kind == "cot":
            line = f"{summary.written} of {summary.queries} queries answered right and written; {summary.wrong} dropped"
        else:
            line = f"{summary.steps} steps, final loss {summary.final_loss:.4g}, {summary.examples} examples"
        console.print(f"{line}; {len(issues)} bad example(s) skipped", markup=False, soft_wrap=True)
    if not json_out:
        print(getattr(summary, "out", None) or summary.out_dir)


def _command(kind: str, config_cls: type, target: str, doc: str) -> Callable[..., None]:
    """The command of one stage; `target` ("module:function") runs it, imported only when the command runs."""

    def command(**kwargs: Any) -> None:
        import importlib

        json_out, quiet = kwargs.pop("json_out"), kwargs.pop("quiet")
        silence_library(quiet)
        config = config_cls(**kwargs)
        module, function = target.split(":")
        run = getattr(importlib.import_module(module), function)
        with progress_bar(quiet) as progress:
            summary = run(config, progress=progress)
        _report(kind, summary, json_out, quiet)

    command.__signature__ = inspect.Signature([*config_parameters(config_cls), *_OUTPUT_OPTIONS])  # type: ignore[attr-defined]
    command.__doc__ = doc
    command.__name__ = kind
    return handle_errors(command)


STAGES = [
    (
        "encoder",
        EncoderTrainConfig,
        "retrv.train.encoder:train_encoder",
        "Fine-tune a CLIP/SigLIP encoder contrastively on M-BEIR-layout data.",
    ),
    (
        "pretrain",
        PretrainConfig,
        "retrv.train.pretrain:pretrain_vlm",
        "Pretrain a small VLM from scratch on a world's captions, pairs and texts (no pretrained model needed).",
    ),
    (
        "icm",
        IcmTrainConfig,
        "retrv.train.icm:train_icm",
        "Stage 1: align the ICM with the frozen reasoner (compressed tokens read like full ones).",
    ),
    (
        "cot",
        CotConfig,
        "retrv.train.cot:train_cot",
        "Write 4-step chain-of-thought for training queries with a teacher VLM.",
    ),
    (
        "sft",
        SftTrainConfig,
        "retrv.train.sft:train_sft",
        "Stage 2: LoRA + ICM on chain-of-thought with detail inspection.",
    ),
    (
        "grpo",
        GrpoTrainConfig,
        "retrv.train.grpo:train_grpo",
        "Stage 3: GRPO over the inference loop (reward: format, correctness, inspections).",
    ),
]
for _kind, _cls, _target, _doc in STAGES:
    app.command(_kind, help=_doc)(_command(_kind, _cls, _target, _doc))
# The pretraining stage's first name, kept for scripts that use it.
app.command("caption", help=STAGES[1][3], hidden=True)(_command("pretrain", PretrainConfig, STAGES[1][2], STAGES[1][3]))
