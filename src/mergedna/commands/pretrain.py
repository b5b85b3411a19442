"""``mergedna pretrain``: the options of :class:`~mergedna.training.trainer.TrainConfig` (and the
objective and model overrides it carries), from flags and/or a ``--config`` file, then
:func:`~mergedna.training.trainer.pretrain`. Every default shown by ``--help`` is the dataclass field's."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import PRESETS
from ..objectives import ObjectiveConfig
from ..training.trainer import TrainConfig
from ._common import add_option, add_precision, field_defaults

TRAIN = field_defaults(TrainConfig)
OBJECTIVE = field_defaults(ObjectiveConfig)
# --precision onto TrainConfig.bf16 (None: "auto", bf16 where native and measured faster)
BF16 = {"auto": None, "bf16": True, "fp32": False}
PRECISION = {v: k for k, v in BF16.items()}

# flags that go to the objective config and to the model config (the rest are TrainConfig fields)
OBJECTIVE_FLAGS = ("lambda_latent", "masking", "ratio_mean", "ratio_std", "ratio_min", "ratio_max", "objective",
                   "mlm_mask_ratio", "mask_spans", "pass3_budget")
MODEL_FLAGS = ("tokenizer", "merge_scope", "merge_grad", "merge_temperature", "local_encoder_layers",
               "latent_encoder_layers", "fixed_span")
_NOT_SETTINGS = ("func", "command", "config", "set", "argv")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("pretrain", help="pretrain on FASTA genomes (MTR + latent MTR + AMTM)",
                              description="Pretrain MergeDNA on one or more FASTA files. Launch with torchrun for "
                                          "DDP. Every option can also come from --config FILE (.json or .toml, the "
                                          "TrainConfig field names; precision as `precision` or `bf16`).")
    add_options(p)
    p.set_defaults(func=run)
    return p


def add_options(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """The options of ``pretrain``; ``defaults=False`` leaves every default out (see :func:`given_options`)."""
    def a(flag, help=None, src=TRAIN, **kw):
        return add_option(target, flag, src if defaults else None, help, **kw)

    target = p
    a("--fasta", "FASTA files (plain, .gz or bgzip), many records each", nargs="+")
    a("--out", "run directory: checkpoints/, model/, metrics.jsonl, curves.png")
    p.add_argument("--config", help="JSON or TOML file with any of these settings; flags override it")
    a("--preset", "model size", choices=sorted(PRESETS))
    a("--init-from", "start from a checkpoint's weights")
    a("--resume", "continue the run in --out from its newest checkpoint (same settings; --steps may grow)",
      action="store_true")
    a("--overwrite", "--out holds another run: delete its files (run.json, checkpoints/, model/, metrics...) and "
                     "start again", action="store_true")
    a("--steps", "optimizer steps", type=int)
    a("--batch-size", "windows per micro-batch per process", type=int)
    a("--grad-accum", "micro-batches per step", type=int)
    a("--window", "bases per window, N", type=int)
    a("--val", "held-out part: fraction of each record, a record name, or rec:start-end")
    a("--max-n-fraction", "reject windows with more N", type=float)
    a("--rc-prob", "reverse-complement augmentation probability", type=float)
    a("--cache-dir", "where encoded genomes are cached (None: ~/.cache/mergedna)")
    a("--lr", "peak learning rate (paper 1e-4)", type=float)
    a("--warmup", "warm-up steps (paper 10k)", type=int)
    a("--min-lr-ratio", "cosine floor as a fraction of --lr", type=float)
    a("--weight-decay", "AdamW weight decay (paper 1e-8)", type=float)
    a("--clip", "gradient-norm clip", type=float)
    add_precision(p, PRECISION[TRAIN["bf16"]] if defaults else argparse.SUPPRESS)
    a("--compile", "torch.compile the transformer blocks", action="store_true")
    a("--activation-checkpointing", "recompute block activations during backward: much less memory for ~1/3 more "
      "compute (None: on exactly when the estimate printed at start-up does not fit the device)",
      action=argparse.BooleanOptionalAction)
    a("--strategy", "under torchrun: DDP or FSDP2", choices=["ddp", "fsdp"])
    a("--seed", type=int)
    a("--log-every", type=int)
    a("--val-every", type=int)
    a("--val-windows", "held-out windows per validation", type=int)
    a("--ckpt-every", type=int)
    a("--keep-last", "checkpoints kept", type=int)
    a("--max-bad-steps", "stop after this many NaN/Inf steps in a row", type=int)
    a("--time-limit", "stop after this many minutes, with a checkpoint", type=float)
    a("--device", "cpu or cuda (None: cuda if available)")
    a("--no-progress", "no progress bar", dest="progress", action="store_false")

    target = p.add_argument_group("objective (docs/method.md §7 and its ablations)")

    def o(flag, help=None, **kw):
        return a(flag, help, src=OBJECTIVE, **kw)

    o("--lambda-latent", "λ for latent MTR (0 = off)", type=float)
    o("--masking", "pass 3 masking", choices=["amtm", "uniform", "none"])
    o("--ratio-mean", "mean L/N (None: the model's merge_ratio)", type=float)
    o("--ratio-std", "std of L/N per step (0 = fixed)", type=float)
    o("--objective", "mlm = plain masked modelling (no-merging ablation)", choices=["mergedna", "mlm"])
    o("--ratio-min", "lowest L/N drawn (None: mean - 2 std)", type=float)
    o("--ratio-max", "highest L/N drawn (None: mean + 2 std)", type=float)
    o("--mlm-mask-ratio", "fraction of tokens masked with --objective mlm", type=float)
    o("--mask-spans", "AMTM spans: in base coordinates with content-blind edges, or the drawn tokens' own spans "
                      "(the paper's wording; span edges then leak the bases)", choices=["bases", "tokens"])
    o("--pass3-budget", "pass 3 compresses visible and masked bases apart, or the window as one",
      choices=["visible", "window"])

    g = p.add_argument_group("model overrides (default: the preset's, or the --init-from checkpoint's)")
    g.add_argument("--tokenizer", choices=["learned", "none", "fixed"], help="none/fixed = no-merging ablation")
    g.add_argument("--fixed-span", dest="fixed_span", type=int)
    g.add_argument("--merge-scope", dest="merge_scope", choices=["sequence", "window"])
    g.add_argument("--merge-grad", dest="merge_grad", choices=["relaxed", "none"],
                   help="relaxed: the losses shape which pairs merge; none: no gradient into the grouping "
                        "embedding (ablation)")
    g.add_argument("--merge-temperature", dest="merge_temperature", type=float,
                   help="temperature of the relaxed merge degree, in cosine units")
    g.add_argument("--local-encoder-layers", dest="local_encoder_layers", type=int)
    g.add_argument("--latent-encoder-layers", dest="latent_encoder_layers", type=int)
    g.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other model config field")


def given_options(args) -> dict:
    """The options given on the command line (not their defaults): they override ``--config``, and
    the model overrides apply only when given. Read by parsing the command's own words again with
    every default suppressed (``args.argv``, set by :func:`mergedna.commands.main`); without them,
    the options whose value differs from the default."""
    argv = getattr(args, "argv", None)
    if argv is None:
        q = argparse.ArgumentParser(add_help=False)
        add_options(q)
        defaults = vars(q.parse_args([]))
        return {k: v for k, v in vars(args).items() if k in defaults and v != defaults[k]}
    q = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    add_options(q, defaults=False)
    return vars(q.parse_args(argv[argv.index(args.command) + 1:]))


def parse_value(text: str):
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, 'window' -> 'window'."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def load_config_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"mergedna: config file {path} not found")
    if p.suffix != ".toml":
        try:
            return json.loads(p.read_text())
        except ValueError as err:
            raise SystemExit(f"mergedna: cannot parse config file {path}: {err}")
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:
        try:
            import tomli as tomllib  # the same parser, for Python 3.10
        except ModuleNotFoundError:
            raise SystemExit(f"mergedna: reading {path} needs Python >= 3.11 or the 'tomli' package "
                             "(pip install tomli); or write the config as .json") from None
    try:
        return tomllib.loads(p.read_text())
    except (ValueError, tomllib.TOMLDecodeError) as err:
        raise SystemExit(f"mergedna: cannot parse config file {path}: {err}")


def _bf16(precision) -> bool | None:
    if precision not in BF16:
        raise SystemExit(f"mergedna: precision must be one of {sorted(BF16)}, got {precision!r}")
    return BF16[precision]


def train_config(args) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``pretrain`` options: the ``--config`` file, then the given flags."""
    values = load_config_file(args.config) if args.config else {}
    values.setdefault("model", {})
    values.setdefault("objective", {})
    if "precision" in values:
        values["bf16"] = _bf16(values.pop("precision"))
    for key, val in given_options(args).items():
        if key in _NOT_SETTINGS:
            continue
        if key == "precision":
            values["bf16"] = _bf16(val)
        elif key in OBJECTIVE_FLAGS:
            values["objective"][key] = val
        elif key in MODEL_FLAGS:
            values["model"][key] = val
        else:
            values[key] = val
    for item in args.set or []:
        if "=" not in item:
            raise SystemExit(f"mergedna: --set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        values["model"][k] = parse_value(v)
    unknown = sorted(set(values) - set(TRAIN))
    if unknown:
        raise SystemExit(f"mergedna: unknown pretrain settings {unknown}")
    return TrainConfig(**values)


def run(args) -> int:
    from ..training.trainer import TrainingDiverged, pretrain

    cfg = train_config(args)
    try:
        summary = pretrain(cfg)
    except TrainingDiverged as err:
        print(f"mergedna pretrain: {err}", file=sys.stderr)
        return 3
    print(f"done: {summary['steps_done']} steps ({summary['stopped_by']}); model in {cfg.out}/model")
    return 0
