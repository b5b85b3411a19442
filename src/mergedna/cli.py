"""The ``mergedna`` command line. Each subcommand is a thin layer over the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

from .config import PRESETS, preset


def _module_counts(model) -> dict[str, int]:
    mods = {"local_encoder (φ, tokenizer)": model.mergedna.local_encoder,
            "latent_encoder (ψ)": model.mergedna.latent_encoder,
            "latent_decoder (ω, pretraining only)": model.latent_decoder,
            "local_decoder (ζ, incl. base head)": [model.local_decoder, model.lm_head]}
    counts = {}
    for name, mod in mods.items():
        mods_ = mod if isinstance(mod, list) else [mod]
        counts[name] = sum(p.numel() for m in mods_ for p in m.parameters())
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def cmd_info(args) -> int:
    from .model import MergeDNAForPretraining

    if args.model:
        from .pretrained import load_config

        cfg, title = load_config(args.model), args.model
    else:
        cfg, title = preset(args.preset), f"preset {args.preset!r}"
    with torch.device("meta"):  # count without allocating weights
        model = MergeDNAForPretraining(cfg)
    counts = _module_counts(model)
    n = args.length
    L = round(cfg.merge_ratio * n) if cfg.tokenizer == "learned" else (
        n if cfg.tokenizer == "none" else -(-n // cfg.fixed_span))
    K = round(cfg.latent_merge_ratio * L)
    D = cfg.hidden_size
    print(f"MergeDNA {title}: {counts['total'] / 1e6:.2f}M parameters")
    for name, c in counts.items():
        if name != "total":
            print(f"  {name:<38s} {c / 1e6:9.2f}M")
    print(f"  D={D} heads={cfg.num_heads} ffn={cfg.ffn_size} window={cfg.window_size} "
          f"blocks φ/ψ/ω/ζ={cfg.local_encoder_layers}/{cfg.latent_encoder_layers}/"
          f"{cfg.latent_decoder_layers}/{cfg.local_decoder_layers} tokenizer={cfg.tokenizer} "
          f"merge_scope={cfg.merge_scope}")
    print(f"Shapes for one sequence of N={n} bases (merge_ratio={cfg.merge_ratio}):")
    print(f"  input ids             (B, {n})")
    print(f"  Local Encoder  φ  ->  (B, {L}, {D})  tokens, assign (B, {n}) base->token")
    print(f"  Latent Encoder ψ  ->  (B, {L}, {D})  [pretraining pass 2: global merge to (B, {K}, {D})]")
    print(f"  Latent Decoder ω  ->  (B, {L}, {D})")
    print(f"  Local Decoder  ζ  ->  (B, {n}, {D})  un-merged by assign, then 4 base logits (B, {n}, 4)")
    if args.json:
        print(json.dumps({"config": cfg.to_dict(), "parameters": counts}, indent=2))
    return 0


def _parse_value(text: str):
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


def _load_config_file(path: str) -> dict:
    from pathlib import Path

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


# pretrain flags that go to the objective config and to the model config (the rest are TrainConfig fields)
_OBJECTIVE_FLAGS = ("lambda_latent", "masking", "ratio_mean", "ratio_std", "ratio_min", "ratio_max", "objective",
                    "mlm_mask_ratio", "mask_spans", "pass3_budget")
_MODEL_FLAGS = ("tokenizer", "merge_scope", "merge_grad", "merge_temperature", "local_encoder_layers",
                "latent_encoder_layers", "fixed_span")


def cmd_pretrain(args) -> int:
    from .training.trainer import TrainConfig, TrainingDiverged, pretrain

    values = _load_config_file(args.config) if args.config else {}
    values.setdefault("model", {})
    values.setdefault("objective", {})
    for key, val in vars(args).items():
        if val is None or key in ("func", "command", "config", "set"):
            continue
        if key in _OBJECTIVE_FLAGS:
            values["objective"][key] = val
        elif key in _MODEL_FLAGS:
            values["model"][key] = val
        else:
            values[key] = val
    for item in args.set or []:
        if "=" not in item:
            raise SystemExit(f"mergedna: --set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        values["model"][k] = _parse_value(v)
    known = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise SystemExit(f"mergedna: unknown pretrain settings {unknown}")
    try:
        summary = pretrain(TrainConfig(**values))
    except TrainingDiverged as err:
        print(f"mergedna pretrain: {err}", file=sys.stderr)
        return 3
    print(f"done: {summary['steps_done']} steps ({summary['stopped_by']}); model in {values.get('out', 'runs/pretrain')}/model")
    return 0


def add_pretrain_parser(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain on FASTA genomes (MTR + latent MTR + AMTM)",
                       description="Pretrain MergeDNA on one or more FASTA files. Launch with torchrun for DDP. "
                                   "Every option can also come from --config FILE (.json or .toml, same names).")
    a = p.add_argument
    a("--fasta", nargs="+", help="FASTA files (plain, .gz or bgzip), many records each")
    a("--out", help="run directory: checkpoints/, model/, metrics.jsonl, curves.png (default runs/pretrain)")
    a("--config", help="JSON or TOML file with any of these settings; flags override it")
    a("--preset", choices=sorted(PRESETS), help="model size (default small)")
    a("--init-from", dest="init_from", help="start from a checkpoint's weights")
    a("--resume", action="store_true", default=None,
      help="continue the run in --out from its newest checkpoint (same settings; --steps may grow)")
    a("--overwrite", action="store_true", default=None,
      help="--out holds another run: delete its files (run.json, checkpoints/, model/, metrics...) and start again")
    a("--steps", type=int, help="optimizer steps (default 1000)")
    a("--batch-size", dest="batch_size", type=int, help="windows per micro-batch per process (default 8)")
    a("--grad-accum", dest="grad_accum", type=int, help="micro-batches per step (default 1)")
    a("--window", type=int, help="bases per window, N (default 4096)")
    a("--val", help="held-out part: fraction of each record (0.01), a record name, or rec:start-end")
    a("--max-n-fraction", dest="max_n_fraction", type=float, help="reject windows with more N (default 0.1)")
    a("--rc-prob", dest="rc_prob", type=float, help="reverse-complement augmentation probability (default 0.5)")
    a("--cache-dir", dest="cache_dir", help="where encoded genomes are cached (default ~/.cache/mergedna)")
    a("--lr", type=float, help="peak learning rate (default 3e-4; paper 1e-4)")
    a("--warmup", type=int, help="warm-up steps (default 100; paper 10k)")
    a("--min-lr-ratio", dest="min_lr_ratio", type=float, help="cosine floor as a fraction of --lr (default 0.1)")
    a("--weight-decay", dest="weight_decay", type=float, help="AdamW weight decay (default 1e-8, paper)")
    a("--clip", type=float, help="gradient-norm clip (default 1.0)")
    a("--bf16", action=argparse.BooleanOptionalAction, default=None,
      help="bf16 autocast on or off (default: on where the device multiplies bf16 natively: AMX/AVX512-BF16 "
           "CPUs, CUDA; elsewhere fp32)")
    a("--compile", action="store_true", default=None, help="torch.compile the transformer blocks")
    a("--activation-checkpointing", dest="activation_checkpointing", action=argparse.BooleanOptionalAction,
      default=None, help="recompute block activations during backward: much less memory for ~1/3 more compute "
                         "(default: on exactly when the estimate printed at start-up does not fit the device)")
    a("--strategy", choices=["ddp", "fsdp"], help="under torchrun: DDP (default) or FSDP2")
    a("--seed", type=int)
    a("--log-every", dest="log_every", type=int)
    a("--val-every", dest="val_every", type=int)
    a("--val-windows", dest="val_windows", type=int, help="held-out windows per validation (default 32)")
    a("--ckpt-every", dest="ckpt_every", type=int)
    a("--keep-last", dest="keep_last", type=int, help="checkpoints kept (default 3)")
    a("--max-bad-steps", dest="max_bad_steps", type=int, help="stop after this many NaN/Inf steps in a row")
    a("--time-limit", dest="time_limit", type=float, help="stop after this many minutes, with a checkpoint")
    a("--device", help="cpu or cuda (default: cuda if available)")
    a("--no-progress", dest="progress", action="store_false", default=None)
    g = p.add_argument_group("objective (docs/method.md §7 and its ablations)")
    g.add_argument("--lambda-latent", dest="lambda_latent", type=float, help="λ for latent MTR (default 0.25; 0 = off)")
    g.add_argument("--masking", choices=["amtm", "uniform", "none"], help="pass 3 masking (default amtm)")
    g.add_argument("--ratio-mean", dest="ratio_mean", type=float, help="mean L/N (default 0.5)")
    g.add_argument("--ratio-std", dest="ratio_std", type=float, help="std of L/N per step (default 0.05; 0 = fixed)")
    g.add_argument("--objective", choices=["mergedna", "mlm"], help="mlm = plain masked modelling (no-merging ablation)")
    g.add_argument("--ratio-min", dest="ratio_min", type=float, help="lowest L/N drawn (default 0.4)")
    g.add_argument("--ratio-max", dest="ratio_max", type=float, help="highest L/N drawn (default 0.6)")
    g.add_argument("--mlm-mask-ratio", dest="mlm_mask_ratio", type=float)
    g.add_argument("--mask-spans", dest="mask_spans", choices=["bases", "tokens"],
                   help="AMTM spans: in base coordinates with content-blind edges (default), or the drawn tokens' "
                        "own spans (the paper's wording; span edges then leak the bases)")
    g.add_argument("--pass3-budget", dest="pass3_budget", choices=["visible", "window"],
                   help="pass 3 compresses visible and masked bases apart (default), or the window as one")
    g = p.add_argument_group("model overrides")
    g.add_argument("--tokenizer", choices=["learned", "none", "fixed"], help="none/fixed = no-merging ablation")
    g.add_argument("--fixed-span", dest="fixed_span", type=int)
    g.add_argument("--merge-scope", dest="merge_scope", choices=["sequence", "window"])
    g.add_argument("--merge-grad", dest="merge_grad", choices=["relaxed", "none"],
                   help="relaxed: the losses shape which pairs merge (default); none: no gradient into the "
                        "grouping embedding (ablation)")
    g.add_argument("--merge-temperature", dest="merge_temperature", type=float,
                   help="temperature of the relaxed merge degree, in cosine units (default 0.1)")
    g.add_argument("--local-encoder-layers", dest="local_encoder_layers", type=int)
    g.add_argument("--latent-encoder-layers", dest="latent_encoder_layers", type=int)
    g.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other model config field")
    p.set_defaults(func=cmd_pretrain)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mergedna", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="parameter counts per module and tensor shapes of a preset or checkpoint")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", default="small", choices=sorted(PRESETS))
    g.add_argument("--model", help="checkpoint directory (made by save_pretrained)")
    p.add_argument("--length", type=int, default=4096, help="sequence length N for the shape listing")
    p.add_argument("--json", action="store_true", help="also print config and counts as JSON")
    p.set_defaults(func=cmd_info)
    add_pretrain_parser(sub)
    from . import benchmark, demo, embed, finetune, segment, tokenizer_stats_cmd, variants_cli

    demo.add_parser(sub)
    finetune.add_parser(sub)
    benchmark.add_parser(sub)
    embed.add_parser(sub)
    segment.add_parser(sub)
    tokenizer_stats_cmd.add_parser(sub)
    variants_cli.add_parser(sub)
    return parser


class _Report(logging.Handler):
    """Library log lines (what a checkpoint load kept, dropped and added) as ``mergedna <cmd>: ...`` on
    stdout, whatever sys.stdout is now; stderr is for errors."""

    def __init__(self, command: str):
        super().__init__()
        self.command = command

    def emit(self, record: logging.LogRecord) -> None:
        print(f"mergedna {self.command}: {record.getMessage()}", file=sys.stdout, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand. Expected failures (bad input files, bad settings) print one line naming the
    file, record and position instead of a traceback; set MERGEDNA_DEBUG=1 to see the traceback."""
    import os

    args = build_parser().parse_args(argv)
    logger = logging.getLogger("mergedna.pretrained")  # what --model / --init-from loaded, in one line
    report, level = _Report(args.command), logger.level
    logger.addHandler(report)
    logger.setLevel(logging.INFO)
    try:
        return args.func(args)
    except (OSError, ValueError, KeyError) as err:
        if os.environ.get("MERGEDNA_DEBUG"):
            raise
        if isinstance(err, KeyError) and err.args:
            msg = err.args[0]
        elif isinstance(err, OSError) and err.strerror and err.filename:  # disk full, read-only, permission
            msg = f"{err.filename}: {err.strerror}"
        else:
            msg = err
        print(f"mergedna {args.command}: error: {msg}", file=sys.stderr)
        return 2
    finally:  # only while a command runs: library calls stay silent
        logger.removeHandler(report)
        logger.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
