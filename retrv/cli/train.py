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

from retrv.cli.common import handle_errors, print_json, progress_bar, stderr_console
from retrv.train.caption import CaptionTrainConfig
from retrv.train.config import EncoderTrainConfig, describe
from retrv.train.cot import CotConfig
from retrv.train.grpo import GrpoTrainConfig
from retrv.train.icm import IcmTrainConfig
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


def _command(kind: str, config_cls: type, run: Callable[[Any, Any], Any], doc: str) -> Callable[..., None]:
    def command(**kwargs: Any) -> None:
        json_out, quiet = kwargs.pop("json_out"), kwargs.pop("quiet")
        config = config_cls(**kwargs)
        with progress_bar(quiet) as progress:
            summary = run(config, progress)
        _report(kind, summary, json_out, quiet)

    command.__signature__ = inspect.Signature([*config_parameters(config_cls), *_OUTPUT_OPTIONS])  # type: ignore[attr-defined]
    command.__doc__ = doc
    command.__name__ = kind
    return handle_errors(command)


def _encoder(config: Any, progress: Any) -> Any:
    from retrv.train.encoder import train_encoder

    return train_encoder(config, progress)


def _caption(config: Any, progress: Any) -> Any:
    from retrv.train.caption import train_caption

    return train_caption(config, progress)


def _icm(config: Any, progress: Any) -> Any:
    from retrv.train.icm import train_icm

    return train_icm(config, progress)


def _cot(config: Any, progress: Any) -> Any:
    from retrv.train.cot import train_cot

    return train_cot(config, progress)


def _sft(config: Any, progress: Any) -> Any:
    from retrv.train.sft import train_sft

    return train_sft(config, progress)


def _grpo(config: Any, progress: Any) -> Any:
    from retrv.train.grpo import train_grpo

    return train_grpo(config, progress=progress)


STAGES = [
    ("encoder", EncoderTrainConfig, _encoder, "Fine-tune a CLIP/SigLIP encoder contrastively on M-BEIR-layout data."),
    ("caption", CaptionTrainConfig, _caption, "Pretrain a tiny base VLM from scratch on a world's captions."),
    (
        "icm",
        IcmTrainConfig,
        _icm,
        "Stage 1: align the ICM with the frozen reasoner (compressed tokens read like full ones).",
    ),
    ("cot", CotConfig, _cot, "Write 4-step chain-of-thought for training queries with a teacher VLM."),
    ("sft", SftTrainConfig, _sft, "Stage 2: LoRA + ICM on chain-of-thought with detail inspection."),
    (
        "grpo",
        GrpoTrainConfig,
        _grpo,
        "Stage 3: GRPO over the inference loop (reward: format, correctness, inspections).",
    ),
]
for _kind, _cls, _run, _doc in STAGES:
    app.command(_kind, help=_doc)(_command(_kind, _cls, _run, _doc))
