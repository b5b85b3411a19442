"""``mergedna info``: parameter counts per module and tensor shapes of a preset or a checkpoint."""

from __future__ import annotations

import json

import torch

from ..config import PRESETS, preset


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("info", help="parameter counts per module and tensor shapes of a preset or checkpoint")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", default="small", choices=sorted(PRESETS), help="(default: %(default)s)")
    g.add_argument("--model", help="checkpoint directory (made by save_pretrained)")
    p.add_argument("--length", type=int, default=4096, help="sequence length N for the shape listing "
                                                            "(default: %(default)s)")
    p.add_argument("--json", action="store_true", help="also print config and counts as JSON")
    p.set_defaults(func=run)


def module_counts(model) -> dict[str, int]:
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


def run(args) -> int:
    from ..model import MergeDNAForPretraining

    if args.model:
        from ..pretrained import load_config

        cfg, title = load_config(args.model), args.model
    else:
        cfg, title = preset(args.preset), f"preset {args.preset!r}"
    with torch.device("meta"):  # count without allocating weights
        model = MergeDNAForPretraining(cfg)
    counts = module_counts(model)
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
