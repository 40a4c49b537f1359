"""The command line: each verb parses its arguments and calls one plain Python function.

Everything the CLI does is callable from Python under the same names (attnrobust.study.run_study,
attnrobust.train.train, attnrobust.evaluate.evaluate_checkpoints, attnrobust.report.build_report, ...). Modules are
imported inside the handlers so that `attnrobust --help` stays instant (torch takes seconds to import).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnrobust import __version__
from attnrobust.config import SHIPPED, attack_config, load_config
from attnrobust.errors import UserError


def _add_common(p: argparse.ArgumentParser, data: bool = True, device: bool = True) -> None:
    if data:
        p.add_argument("--data-dir", type=Path, default=None,
                       help="folder holding the dataset files (default: $ATTNROBUST_DATA, then the user cache)")
    if device:
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def _add_attack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="attack.KEY=VALUE",
                   help="an [attack] setting, spelled as in a study config (value in TOML syntax; repeatable): "
                        "attacks (default [\"fgsm\", \"pgd\"]; also apgd, minimal, autoattack), fgsm_eps, pgd_eps, "
                        "pgd_alpha, pgd_steps, random_start, keep_best, minimal_max_eps, autoattack_eps, "
                        "autoattack_version (fast, standard), corruptions ([\"all\"] or names), severities, ...; "
                        "e.g. --set 'attack.pgd_steps=[5,10]'")
    # not "--n": torchrun's parser would take it for an abbreviation of its own --nnodes/--nproc-per-node
    p.add_argument("--num-images", type=int, default=None, metavar="N",
                   help="attack only the first N test images (default: all)")
    p.add_argument("--batch-size", type=int, default=256, help="images per attack batch (default: 256)")
    p.add_argument("--out", type=Path, default=None, help="append the result records to this JSONL file")
    p.add_argument("--seed", type=int, default=0, help="seed for random starts (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--allow-code", action="append", default=[], metavar="MODULE",
                   help="let checkpoints of user models rebuild them by running this code: a module (and its "
                        "submodules), a .py file or an entry point (repeatable); refused otherwise")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnrobust",
        description="Does an attention module make an image classifier more or less robust to adversarial "
                    "attacks? Train, attack and report, reproducing Agrawal et al. (2021).")
    parser.add_argument("--version", action="version", version=f"attnrobust {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    _add_run_verb(verbs)
    _add_train_verb(verbs)
    _add_attack_verb(verbs)
    _add_transfer_verb(verbs)
    _add_report_verb(verbs)
    _add_ls_verb(verbs)
    _add_data_verb(verbs)
    _add_models_verb(verbs)
    return parser


def _add_run_verb(verbs) -> None:
    p = verbs.add_parser("run", help="run a study (train, attack, report) from a config",
                         description="Run a whole study: train every dataset x model x seed not yet trained, "
                                     "attack (white-box and transfer), then build the report. Resumable: "
                                     "rerun the same command after an interruption.")
    p.add_argument("config", nargs="?", default="quick",
                   help=f"a TOML file or a shipped config: {', '.join(SHIPPED)} (default: quick)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable; value in TOML syntax)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--detach", action="store_true",
                   help="eval.executor = \"slurm\": exit once the jobs are submitted; rerun the same command to "
                        "collect them, resubmit failures, submit the attacks of trained models and build the report")
    p.add_argument("--power-plan", action="store_true",
                   help="print what the study's seeds can detect (from verdict.pilot, a previous run's folder) and "
                        "the seeds needed for verdict.detect_pp / detect_eps (default: the margins), then exit")
    _add_common(p)
    p.set_defaults(handler=cmd_run)


def _add_train_verb(verbs) -> None:
    p = verbs.add_parser("train", help="train one model on one dataset",
                         description="Train one model; resumes from the last checkpoint in --out.")
    p.add_argument("--dataset", required=True, help="fashion-mnist, fashion-mnist-mini, cifar10, cifar100, or "
                                                     "your own DIR/NAME.npz or DIR/NAME/ in --data-dir")
    p.add_argument("--model", required=True, help="a registered model (see `attnrobust models`), or your own "
                                                   "as MODULE:CALLABLE or FILE.py:CALLABLE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="train.KEY=VALUE",
                   help="a [train] setting, spelled as in a study config (value in TOML syntax; repeatable), over "
                        "the dataset's recipe: width (64 = paper size), epochs, batch_size, lr, weight_decay, "
                        "label_smoothing, adversarial (\"pgd\": PGD-AT, Madry et al.; \"fgsm-rs\": Wong et al.), "
                        "adv_eps, adv_steps, compile, model_args, ...; e.g. --set train.epochs=3")
    p.add_argument("--out", type=Path, required=True, help="run folder for checkpoints/ and logs/")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(p)
    p.set_defaults(handler=cmd_train)


def _add_attack_verb(verbs) -> None:
    p = verbs.add_parser("attack", help="white-box attacks on one checkpoint",
                         description="FGSM sweep, PGD iteration sweep (and APGD) on a trained checkpoint, "
                                     "on the test split of the dataset it was trained on.")
    p.add_argument("checkpoint", type=Path, help="a .safetensors checkpoint written by `attnrobust train`")
    _add_attack_args(p)
    _add_common(p)
    p.set_defaults(handler=cmd_attack)


def _add_transfer_verb(verbs) -> None:
    p = verbs.add_parser("transfer", help="transfer attacks: craft on a source, score on targets",
                         description="Craft adversarial images on --source once per attack setting and score "
                                     "them on every --target (and the source itself: the white-box diagonal).")
    p.add_argument("--source", type=Path, required=True, help="checkpoint that crafts the attack")
    p.add_argument("--target", type=Path, action="append", required=True,
                   help="checkpoint scored on the attack (repeatable)")
    _add_attack_args(p)
    _add_common(p)
    p.set_defaults(handler=cmd_transfer)


def _add_report_verb(verbs) -> None:
    p = verbs.add_parser("report", help="(re)build a run's report from its results.jsonl",
                         description="Tables II/III (md, csv, tex), figures, paper comparison and verdicts, "
                                     "written to RUN/report/.")
    p.add_argument("run_dir", type=Path, metavar="RUN", help="a run folder holding results.jsonl")
    p.set_defaults(handler=cmd_report)


def _add_ls_verb(verbs) -> None:
    p = verbs.add_parser("ls", help="list runs: config, jobs done (and queued, running, failed on Slurm), report")
    p.add_argument("runs", type=Path, nargs="?", default=Path("runs"), help="folder of runs (default: runs/)")
    p.set_defaults(handler=cmd_ls)


def _add_data_verb(verbs) -> None:
    p = verbs.add_parser("data", help="download, verify or describe a dataset",
                         description="Datasets are looked for in --data-dir or $ATTNROBUST_DATA, then the "
                                     "user cache, then downloaded from the official URL.")
    p.add_argument("action", choices=["download", "verify", "info"])
    p.add_argument("name", help="fashion-mnist, fashion-mnist-mini, cifar10, cifar100")
    _add_common(p, device=False)
    p.set_defaults(handler=cmd_data)


def _add_models_verb(verbs) -> None:
    p = verbs.add_parser("models", help="list registered models with their parameter counts")
    p.add_argument("--dataset", default="cifar10", help="dataset whose shape and class count to use")
    p.add_argument("--width", type=int, default=64, help="width to build them at (default: 64)")
    p.set_defaults(handler=cmd_models)


# ---- handlers: thin; parse -> call -> print ------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    # the config first: a mistake in it is answered before the study's modules (torch, the report) load, in a
    # fraction of a second instead of three
    cfg = load_config(args.config, args.overrides, args.data_dir)
    from attnrobust.study import run_study

    run_study(cfg, out=args.out, device=args.device, data_dir=args.data_dir, quiet=args.quiet, detach=args.detach,
              power_only=args.power_plan)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from attnrobust.config import single_train_config
    from attnrobust.train import run_training

    cfg = single_train_config(args.dataset, args.model, args.seed, args.overrides, args.data_dir)
    path = run_training(cfg, args.out, device=args.device, data_dir=args.data_dir, quiet=args.quiet)
    print(f"checkpoint: {path}")
    return 0


def _evaluate_and_print(args: argparse.Namespace, sources: list[Path], targets: list[Path] | None) -> int:
    from attnrobust.evaluate import evaluate_checkpoints
    from attnrobust.results import append_records, format_records
    from attnrobust.distributed import is_main

    records = evaluate_checkpoints(sources, targets, attack_config(args.overrides), n=args.num_images,
                                   batch_size=args.batch_size, device=args.device, data_dir=args.data_dir,
                                   seed=args.seed, quiet=args.quiet, allow_code=args.allow_code)
    if not is_main():  # under torchrun every rank holds the same all-reduced records; rank 0 reports them
        return 0
    print(format_records(records))
    if args.out is not None:
        append_records(args.out, records)
        print(f"{len(records)} records appended to {args.out}")
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    return _evaluate_and_print(args, [args.checkpoint], None)


def cmd_transfer(args: argparse.Namespace) -> int:
    return _evaluate_and_print(args, [args.source], args.target)


def cmd_report(args: argparse.Namespace) -> int:
    from attnrobust.report import build_report

    path = build_report(args.run_dir)
    print(f"report: {path}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from attnrobust.runfolder import list_runs

    print(list_runs(args.runs))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from attnrobust import data

    if args.action == "info":
        for key, value in data.info(args.name, data_dir=args.data_dir).items():
            print(f"{key}: {value}")
    else:
        getattr(data, args.action)(args.name, data_dir=args.data_dir)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from attnrobust.data import get_spec
    from attnrobust.models import build_model, list_models

    spec = get_spec(args.dataset)
    counts = {name: sum(p.numel() for p in build_model(name, spec.num_classes, in_channels=spec.channels,
                                                        width=args.width).parameters())
              for name in list_models()}
    print(f"{'model':<18} {'parameters':>12}   ({args.dataset}: {spec.channels}x{spec.height}x{spec.width}, "
          f"{spec.num_classes} classes, width {args.width})")
    for name, count in counts.items():
        print(f"{name:<18} {count:>12,}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except UserError as err:
        print(f"attnrobust: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `attnrobust ... | head`: the reader left; not an error worth a traceback
        sys.stderr.close()
        return 0
    except OSError as err:  # an unwritable folder, a full disk: the machine's answer, with its path, in one line
        print(f"attnrobust: error: {err}; check the path and its permissions or free space", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("attnrobust: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
