"""The command layer: argument parsing and printing live in ``mergedna.commands`` only, no import cycle,
one ``--precision`` flag, option defaults that are the library's own, and a demo whose printed commands
do what it does."""

import argparse
import ast
import dataclasses
import importlib
import pkgutil
from pathlib import Path

import pytest

import mergedna
from mergedna import commands
from mergedna.commands import parse
from mergedna.commands._common import field_defaults, signature_defaults

PACKAGE = Path(mergedna.__file__).parent


def _modules():
    """``{module name: parsed source}`` of every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = (path, ast.parse(path.read_text()))
    return out


def _imports(name: str, path: Path, tree: ast.AST) -> set[str]:
    """Every module name ``tree`` imports, at any depth (function-level imports too), made absolute."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from . import x` names a module
    return found


def _is_command(name: str) -> bool:
    return name == "mergedna.cli" or name.startswith("mergedna.commands")


def test_every_module_imports_and_only_commands_parse_or_print():
    modules = _modules()
    assert "mergedna.commands.pretrain" in modules and "mergedna.finetune" in modules
    for name in modules:
        importlib.import_module(name)
    parsers, printers = [], []
    for name, (path, tree) in modules.items():
        if _is_command(name):
            continue
        if "argparse" in _imports(name, path, tree):
            parsers.append(name)
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print"]
        if calls:
            printers.append(name)
    assert parsers == [], f"library modules that import argparse: {parsers}"
    assert printers == [], f"library modules that print: {printers}"
    assert not [m.name for m in pkgutil.iter_modules(mergedna.__path__) if m.name in ("cli_args", "variants_cli",
                                                                                       "tokenizer_stats_cmd")]


def test_no_import_cycle_and_the_library_never_imports_the_commands():
    modules = _modules()
    graph = {name: {m for m in _imports(name, *modules[name]) if m in modules and m != name} for name in modules}
    upward = {name: sorted(m for m in deps if _is_command(m)) for name, deps in graph.items() if not _is_command(name)}
    assert not {k: v for k, v in upward.items() if v}, "library modules importing the command layer"
    # a cycle through the command layer: a command module reachable from itself
    for start in (n for n in graph if _is_command(n)):
        seen, stack = set(), list(graph[start])
        while stack:
            node = stack.pop()
            assert node != start, f"import cycle through {start}"
            if node not in seen:
                seen.add(node)
                stack.extend(d for d in graph[node] if d != "mergedna.commands" or start == "mergedna.commands")


def _same(a, b) -> bool:
    """Equal, lists as tuples, and None the same as an empty list, tuple or dict ("nothing given")."""
    norm = lambda v: None if v in ((), [], {}) else tuple(v) if isinstance(v, list) else v  # noqa: E731
    return norm(a) == norm(b)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(prog="mergedna")
    sub = parser.add_subparsers(dest="command")
    for command in commands.COMMANDS:
        command.add_parser(sub)
    return dict(sub.choices)


def _options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in p._actions if a.option_strings and a.dest != "help"}


MODEL_COMMANDS = {"pretrain": "auto", "finetune": "auto", "benchmark": "auto", "embed": "fp32",
                  "tokenizer-stats": "fp32", "score-variants": "fp32"}


def test_one_precision_flag_per_model_command():
    for name, p in _subparsers().items():
        flags = {s for a in p._actions for s in a.option_strings}
        assert not flags & {"--bf16", "--no-bf16", "--fp32"}, name
        if name in MODEL_COMMANDS:
            action = _options(p)["precision"]
            assert action.option_strings == ["--precision"] and tuple(action.choices) == ("auto", "bf16", "fp32")
            assert action.default == MODEL_COMMANDS[name], name
            assert "%(default)s" in action.help


def _library_defaults():
    from mergedna.benchmark import run_benchmark
    from mergedna.demo import DemoSettings
    from mergedna.embed import iter_embeddings
    from mergedna.finetune import FinetuneSettings
    from mergedna.objectives import ObjectiveConfig
    from mergedna.segment import segment_fasta
    from mergedna.training.trainer import TrainConfig
    from mergedna.variants import evaluate_files, score_variants

    tuning = field_defaults(FinetuneSettings)
    return {"pretrain": {**field_defaults(TrainConfig), **field_defaults(ObjectiveConfig)},
            "finetune": tuning, "benchmark": {**tuning, **signature_defaults(run_benchmark)},
            "embed": signature_defaults(iter_embeddings), "segment": signature_defaults(segment_fasta),
            "score-variants": signature_defaults(score_variants),
            "eval-variants": {("bootstrap" if k == "n_boot" else k): v for k, v in signature_defaults(evaluate_files).items()},
            "demo": field_defaults(DemoSettings)}


# options named like a library default that deliberately differ: the model overrides of pretrain default to
# "not given" (the preset's or the checkpoint's value); a command's --seed of random weights is not the
# library's seed; `mergedna benchmark` trains both baselines unless told otherwise, run_benchmark none
NOT_DEFAULTS = {"pretrain": {"tokenizer", "merge_scope", "merge_grad", "merge_temperature", "local_encoder_layers",
                             "latent_encoder_layers", "fixed_span"},
                "score-variants": {"seed"}, "segment": {"seed"}, "benchmark": {"baselines"}}


def test_option_defaults_are_the_library_defaults():
    from mergedna.commands.pretrain import BF16

    defaults = _library_defaults()
    checked = 0
    for name, p in _subparsers().items():
        for dest, action in _options(p).items():
            library = defaults.get(name, {})
            if name == "pretrain" and dest == "precision":
                assert BF16[action.default] == library["bf16"]
                checked += 1
            elif dest in library and dest not in NOT_DEFAULTS.get(name, ()):
                assert _same(action.default, library[dest]), f"mergedna {name} {action.option_strings[0]}"
                checked += 1
            if dest in library and action.default is not None and not isinstance(action.default, bool):
                assert "%(default)s" in (action.help or ""), f"mergedna {name} {action.option_strings[0]} help"
    assert checked >= 80  # pretrain ~40, finetune and benchmark ~20 each, the others a few


def test_pretrain_precision_maps_onto_the_bf16_field(tmp_path):
    from mergedna.commands.pretrain import train_config

    assert train_config(parse(["pretrain"])).bf16 is None
    assert train_config(parse(["pretrain", "--precision", "fp32"])).bf16 is False
    assert train_config(parse(["pretrain", "--precision", "bf16"])).bf16 is True
    cfg = tmp_path / "c.json"
    cfg.write_text('{"precision": "fp32", "steps": 7, "window": 64}')
    got = train_config(parse(["pretrain", "--config", str(cfg), "--window", "4096"]))
    assert (got.bf16, got.steps, got.window) == (False, 7, 4096)  # a flag given at its default still wins


def test_demo_steps_are_the_commands_it_prints(tmp_path):
    from mergedna.commands.finetune import finetune_kwargs
    from mergedna.commands.pretrain import train_config
    from mergedna.demo import DemoSettings, demo_steps
    from mergedna.finetune import FinetuneSettings, finetune

    steps = demo_steps(DemoSettings(out=str(tmp_path / "demo"), preset="small", epochs=2.0, seed=3))
    assert [s.name for s in steps] == ["pretrain", "finetune_pretrained", "finetune_scratch", "segment"]
    names = {f.name for f in dataclasses.fields(FinetuneSettings)}
    others = signature_defaults(finetune)
    for step in steps:
        args = parse(step.argv)
        if step.name == "pretrain":
            assert train_config(args) == step.call["config"]
        elif step.name.startswith("finetune"):
            cmd = finetune_kwargs(args)
            assert FinetuneSettings(**{k: v for k, v in cmd.items() if k in names}) == \
                FinetuneSettings(**{k: v for k, v in step.call.items() if k in names})
            for key in (set(cmd) | set(step.call)) - names - {"progress"}:
                got, want = cmd.get(key, others.get(key)), step.call.get(key, others.get(key))
                assert _same(got, want), key
        else:
            assert (args.model, args.fasta, args.region, args.out, args.show) == \
                tuple(step.call[k] for k in ("model", "fasta", "regions", "out", "show"))


@pytest.mark.parametrize("argv", [["--help"], ["pretrain", "--help"]])
def test_python_dash_m_cli_still_answers(argv):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "mergedna.cli", *argv], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "usage: " in res.stdout and "Traceback" not in res.stderr
