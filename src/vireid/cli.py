"""The ``vireid`` command line: a thin layer over the library.

Each sub-command parses its arguments and calls one library function; nothing here computes anything the
Python API cannot. Errors that vireid raises on purpose (:class:`~vireid.errors.VireidError`) and errors of
the environment or of a file's content (``OSError``, non-UTF-8 text, malformed JSON, corrupt safetensors,
out of memory) are printed as one line naming the problem and the fix, with exit code 2; anything else is a
bug and keeps its traceback (exit code 1). ``VIREID_DEBUG=1`` shows every traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from vireid.config import Range
from vireid.errors import ConfigError, VireidError, describe_os_error, unwrap_worker_message

Handler = Callable[[argparse.Namespace], int | None]


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size '{text}' is not HxW, e.g. 128x64") from None
    return h, w


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1, mps... (default: the first GPU if any, else the CPU); checked to exist",
    )


def _add_amp(p: argparse.ArgumentParser) -> None:
    from vireid.devices import AMP_CHOICES

    p.add_argument(
        "--amp",
        default="none",
        choices=AMP_CHOICES,
        help="feature extraction precision: none = fp32 (default; the same for test, index and search, so a "
        "deployed gallery holds the features that were evaluated), or on the GPU auto/bf16/fp16 autocast",
    )


def _check_device(args: argparse.Namespace) -> None:
    """Refuse an unavailable ``--device`` before any work (one line naming the devices there are)."""
    if getattr(args, "device", None) is not None:
        from vireid.devices import resolve_device

        resolve_device(args.device)


# ----------------------------------------------------------------------------------------------- handlers


def cmd_info(args: argparse.Namespace) -> int:
    from vireid.env_info import collect_info, print_info

    print_info(collect_info())
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from vireid.data.synthetic import SynthOptions, write_layout, write_preview

    options = SynthOptions(
        num_ids=args.ids, seed=args.seed, difficulty=args.difficulty, size=args.size, workers=args.workers
    )
    summary = write_layout(args.layout, args.out, options, overwrite=args.overwrite)
    print(summary.describe())
    if args.preview:
        path = write_preview(args.layout, args.out, args.preview)
        print(f"preview written to {path}")
    return 0


def cmd_protocol(args: argparse.Namespace) -> int:
    from vireid.evaluation.protocols.selection import print_protocol_selection

    print_protocol_selection(
        dataset=args.dataset,
        root=args.root,
        mode=args.mode,
        trial=args.trial,
        shots=args.shots,
        sampler=args.sampler,
        direction=args.direction,
        split=args.split,
        out=sys.stdout,
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from vireid.engine.run import train_from_cli

    train_from_cli(
        args.config,
        args.overrides,
        resume=args.resume,
        allow_config_change=args.allow_config_change,
        device=args.device,
    )
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from vireid.engine.run import test_from_cli

    # Positional words with '=' are config overrides, the others checkpoints (argparse cannot split two lists).
    checkpoints = [a for a in args.checkpoint if "=" not in a or os.path.exists(a)]
    overrides = [a for a in args.checkpoint if a not in checkpoints]
    if not checkpoints:
        raise ConfigError("vireid test needs a checkpoint or run folder before the overrides.")
    test_from_cli(
        checkpoints,
        dataset=args.dataset,
        root=args.root,
        protocols=args.protocol,
        out=args.out,
        rerank=args.rerank,
        flip=args.flip,
        visualize=args.visualize,
        trials=args.trials,
        overrides=overrides,
        device=args.device,
        amp=args.amp,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vireid.demo import run_demo

    run_demo(out=args.out, method=args.method, data=args.data, quick=args.quick)
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from vireid.search import build_index_cli

    build_index_cli(
        args.checkpoint,
        images=args.images,
        modality=args.modality,
        output=args.output,
        batch_size=args.batch_size,
        device=args.device,
        labels=args.labels,
        workers=args.workers,
        ivf=args.ivf,
        amp=args.amp,
    )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from vireid.search import search_cli

    search_cli(
        args.index,
        query=args.query,
        text=args.text,
        modality=args.modality,
        top=args.top,
        output=args.output,
        backend=args.backend,
        device=args.device,
        checkpoint=args.checkpoint,
        query_id=args.query_id,
        nprobe=args.nprobe,
        amp=args.amp,
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vireid.export import export_onnx_cli

    export_onnx_cli(
        args.checkpoint,
        onnx_path=args.onnx,
        opset=args.opset,
        check=not args.no_check,
        modality=args.modality,
        device=args.device or "cpu",
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from vireid.evaluation.compare import compare_results

    comparison = compare_results(args.results, metrics=args.metrics, protocol=args.protocol)
    print(comparison.markdown())
    if args.out:
        paths = comparison.save(args.out)
        print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from vireid.engine.pretrain import PretrainOptions, pretrain_backbone

    options = PretrainOptions(
        backbone=args.backbone,
        width=args.width,
        num_ids=args.ids,
        data_seed=args.data_seed,
        height=args.size[0],
        image_width=args.size[1],
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        workers=args.workers,
    )
    report = pretrain_backbone(args.out, options, data=args.data)
    print(report.describe())
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from vireid.convert import convert_checkpoint

    # Overrides may follow SRC or --config CONFIG (`SRC --from agw --config C k=v --out D`): both are lists
    # whose first word is the file / the config, split here (argparse cannot split a list between options).
    src, overrides = args.src[0], args.src[1:]
    config = None
    if args.config:
        config, overrides = args.config[0], [*overrides, *args.config[1:]]
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"'{bad[0]}' is not a key=value override (vireid convert takes one file and one config).")
    folder = convert_checkpoint(
        src, source=args.source, config=config, out=args.out, overrides=overrides, overwrite=args.overwrite
    )
    print(f"converted {src} ({args.source}) -> {folder}")
    print(f"evaluate it with: vireid test {folder} --root DATASET_ROOT   (re-ranking stays off unless --rerank)")
    return 0


# ------------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vireid",
        description="Cross-modal person retrieval: visible<->infrared ReID and text -> RGB+thermal pairs.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="versions, device, CUDA, where weights and caches are looked up")
    p.set_defaults(handler=cmd_info)

    p = sub.add_parser(
        "synth",
        help="generate a synthetic cross-modal person dataset in an official layout",
        description="Procedurally render persons in visible and infrared/thermal and write them in the "
        "exact on-disk layout of a real dataset, so the same readers, protocols and training run on them.",
    )
    p.add_argument("layout", choices=["sysu", "regdb", "llcm", "rgbnt201", "rgbt-pedes", "rgbnt201-pedes"])
    p.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    p.add_argument("--ids", type=int, default=None, help="number of identities (default depends on layout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--difficulty", type=float, default=0.5, help="0 (easy) .. 1 (hard); default 0.5")
    p.add_argument("--size", type=_size, default=None, help="image size HxW, e.g. 128x64")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--preview", default=None, metavar="FILE.png", help="also draw a contact sheet")
    p.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="rendering processes (default: CPUs, at most 4); the output does not depend on it",
    )
    p.set_defaults(handler=cmd_synth)

    p = sub.add_parser(
        "protocol",
        help="print the query or gallery images a protocol selects (audit splits)",
        description="Print one selected image per line: path relative to the root, pid, camid.",
    )
    p.add_argument("dataset", choices=["sysu", "regdb", "llcm", "rgbt_pedes", "rgbnt201_pedes", "rgbnt201"])
    p.add_argument("--root", required=True)
    p.add_argument("--mode", default=None, help="SYSU: all|indoor")
    p.add_argument("--trial", type=int, default=None, help="SYSU/LLCM 0..9, RegDB 1..10")
    p.add_argument("--shots", type=int, default=1, choices=[1, 10])
    p.add_argument("--sampler", default="random", choices=["random", "official"])
    p.add_argument("--direction", default=None, help="RegDB v2t|t2v, LLCM ir2vis|vis2ir|vis2ir.deen_release")
    p.add_argument("--split", default="query", choices=["query", "gallery"])
    p.set_defaults(handler=cmd_protocol)

    p = sub.add_parser(
        "train",
        help="train a model from a YAML config with dotted overrides",
        description="Example: vireid train configs/baseline/sysu.yaml data.root=/data/SYSU-MM01 train.epochs=10",
    )
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides key=value")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run exactly")
    p.add_argument("--allow-config-change", action="store_true", help="resume even though the config differs (logged)")
    _add_device(p)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser(
        "test",
        help="evaluate a checkpoint with every protocol of its dataset (table, JSON, CMC plot)",
    )
    p.add_argument(
        "checkpoint",
        nargs="+",
        help="checkpoint folder or run folder (its best checkpoint is used); for RegDB, one per trial to report "
        "them together; then dotted overrides of the stored config, e.g. eval.batch_size=64",
    )
    p.add_argument("--dataset", default=None)
    p.add_argument("--root", default=None)
    p.add_argument("--protocol", action="append", default=None, help="protocol id (repeatable)")
    p.add_argument("--trials", type=int, default=None, help="number of trials (default: the protocol's)")
    p.add_argument("--out", default=None, help="output folder (default: <checkpoint>/test)")
    p.add_argument("--rerank", default=None, choices=["none", "joint", "query_only"])
    p.add_argument("--flip", action="store_true", default=None, help="flip test-time augmentation")
    p.add_argument("--visualize", type=int, default=0, metavar="K", help="rank lists of the K worst queries")
    _add_device(p)
    _add_amp(p)
    p.set_defaults(handler=cmd_test)

    p = sub.add_parser("demo", help="generate synthetic data, train on the CPU, evaluate, print results")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--method", default="baseline", choices=["baseline", "idkl", "dakd", "dikdnet"])
    p.add_argument("--data", default=None, help="synthetic data folder (default: <out>/data)")
    p.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser(
        "compare",
        help="compare evaluated results: mean ± std, paired differences with 95%% CIs, CMC overlay",
        description="The first result is the reference. A RESULT is a `vireid test` or `vireid demo` folder, a "
        "result JSON, or a quoted glob of the seed runs of one configuration ('runs/idkl_seed*'); prefix "
        "LABEL= to name it. The interval is over seeds when two results share at least two seeds, otherwise "
        "over trials (see docs/evaluation.md).",
    )
    p.add_argument("results", nargs="+", metavar="RESULT")
    p.add_argument("--metrics", nargs="+", default=["R1", "mAP", "mINP"], help="default: R1 mAP mINP")
    p.add_argument("--protocol", default=None, help="protocol id, when a folder holds several")
    p.add_argument("--out", default=None, metavar="DIR", help="write comparison.md/.json and comparison_cmc.png")
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser(
        "pretrain",
        help="pretrain a backbone as an identity classifier on a large synthetic set (a stand-in for ImageNet)",
        description="Generates (or reuses) a synthetic SYSU-layout set with its own generator seed, trains the "
        "ResNet as a visible+infrared identity classifier and writes OUT/backbone.safetensors, loadable by "
        "every ResNet config with model.pretrained=OUT/backbone.safetensors.",
    )
    p.add_argument("--out", required=True, help="output folder (backbone.safetensors + backbone.json)")
    p.add_argument("--data", default=None, help="synthetic set folder (default: OUT/data, generated if absent)")
    p.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet34", "resnet50", "resnet101"])
    p.add_argument("--width", type=int, default=32, help="ResNet stem width (64 = torchvision); default 32")
    p.add_argument("--ids", type=int, default=1000, help="identities of the generated set (default 1000)")
    p.add_argument("--data-seed", type=int, default=1000, help="generator seed; keep it off the benchmark's")
    p.add_argument("--size", type=_size, default=(96, 48), help="image size HxW (default 96x48)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--workers", type=int, default=0, help="decoding processes")
    p.set_defaults(handler=cmd_pretrain)

    p = sub.add_parser("index", help="extract gallery features from a folder of images into an index file")
    p.add_argument("checkpoint")
    p.add_argument("--images", required=True)
    p.add_argument("--modality", default="visible", choices=["visible", "infrared", "pair"])
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--labels", default=None, metavar="FILE", help="'<relative path> <identity>' per line")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="image decoding processes")
    p.add_argument("--ivf", type=int, default=0, metavar="NLIST", help="also build a faiss IVF index (large galleries)")
    _add_device(p)
    _add_amp(p)
    p.set_defaults(handler=cmd_index)

    p = sub.add_parser("search", help="search an index with a query image or a text description")
    p.add_argument("index")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--query", help="query image")
    g.add_argument("--text", help="query text (DIKDNet checkpoints)")
    p.add_argument("--modality", default="infrared", choices=["visible", "infrared"])
    p.add_argument("--top", type=int, default=10)
    p.add_argument("-o", "--output", default=None, help="rank-list picture (PNG)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "faiss", "ivf"])
    p.add_argument("--nprobe", type=int, default=16, help="IVF lists to visit (--backend ivf)")
    p.add_argument("--checkpoint", default=None, help="the index's checkpoint, if it has moved")
    p.add_argument("--query-id", type=int, default=None, help="identity of the query (green/red borders)")
    _add_device(p)
    _add_amp(p)
    p.set_defaults(handler=cmd_search)

    p = sub.add_parser("export", help="export a checkpoint's inference path to ONNX and check parity")
    p.add_argument("checkpoint")
    p.add_argument("--onnx", required=True, metavar="FILE", help="base name: FILE.onnx -> FILE.<modality>.onnx")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--modality", default=None, choices=["visible", "infrared", "pair"], help="default: all")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    p.add_argument(
        "--device", default="cpu", help="where the graph is traced and the PyTorch parity side runs (default cpu)"
    )
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser(
        "convert",
        help="convert an authors' released checkpoint (AGW, CAJ, IDKL, DAKD, MCE) into a vireid checkpoint",
        description="Example: vireid convert sysu_agw_p4_n8_lr_0.1_seed_0_best.t --from agw --config baseline/sysu "
        "--out runs/agw-release. The file is read without executing its pickle; every tensor must land by the "
        "source's key table and the architecture must match the config (a mismatch names the override).",
    )
    p.add_argument(
        "src",
        nargs="+",
        metavar="SRC [key=value ...]",
        help="the release's checkpoint file (*_best.t, model_best.pth, ...), then dotted config overrides",
    )
    p.add_argument("--from", dest="source", required=True, choices=["agw", "caj", "idkl", "dakd", "mce"])
    p.add_argument(
        "--config",
        nargs="+",
        default=None,
        metavar="CONFIG [key=value ...]",
        help="vireid recipe the file was trained as (YAML or preset, default: the source's), then overrides",
    )
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.set_defaults(handler=cmd_convert)
    return parser


OPTION_RANGES: dict[tuple[str, str], Range] = {
    ("test", "trials"): Range(ge=1, integer=True),
    ("test", "visualize"): Range(ge=0, integer=True),
    ("index", "batch_size"): Range(ge=1, integer=True),
    ("index", "workers"): Range(ge=0, integer=True),
    ("index", "ivf"): Range(ge=0, integer=True),
    ("search", "top"): Range(ge=1, integer=True),
    ("search", "nprobe"): Range(ge=1, integer=True),
    ("pretrain", "width"): Range(ge=1, integer=True),
    # pretrain --steps and --batch-size are checked by vireid.engine.pretrain itself.
    ("pretrain", "lr"): Range(gt=0),
    ("pretrain", "workers"): Range(ge=0, integer=True),
    ("pretrain", "seed"): Range(ge=0, integer=True),
    ("pretrain", "data_seed"): Range(ge=0, integer=True),
}
"""Allowed values of the numeric options, checked in one place right after parsing, with the same
:class:`~vireid.config.Range` as the config files (a negative ``--trials`` used to slice trials off the
end, ``--workers -1`` failed deep inside the DataLoader)."""


def option_range_error(args: argparse.Namespace) -> str | None:
    """The message for the first numeric option of ``args`` outside its range in :data:`OPTION_RANGES`."""
    for (command, dest), allowed in OPTION_RANGES.items():
        value = getattr(args, dest, None) if args.command == command else None
        if value is not None and not allowed.allows(value):
            return f"--{dest.replace('_', '-')} {value} is out of range; use {allowed.describe()}."
    return None


DEBUG_ENV = "VIREID_DEBUG"
"""Set this environment variable to 1 to see the full traceback of every error, including the one-line ones."""


def explain_environment_error(exc: BaseException) -> str | None:
    """One line for an error caused by the environment or by a file's content, or None for anything else.

    Covered: file-system errors (``OSError``: missing, unreadable or looping paths, full or read-only disks),
    text that is not UTF-8, malformed JSON, corrupt safetensors files, and running out of memory. Anything
    else is treated as a bug in vireid and keeps its traceback (see :func:`main`).
    """
    import json

    text = str(exc)
    inner = unwrap_worker_message(text)  # an error raised inside a DataLoader worker process
    if isinstance(exc, OSError):
        if exc.errno is not None or exc.filename is not None:
            return str(describe_os_error(exc))
        detail = inner or (text.strip().splitlines() or [""])[0]
        return f"{detail} Fix: check the input files." if detail else None
    if isinstance(exc, UnicodeDecodeError):
        return (
            f"a file is not UTF-8 text ({exc.reason}: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}). "
            "Fix: save text, JSON and YAML files as UTF-8."
        )
    if isinstance(exc, UnicodeEncodeError):
        return (
            f"text cannot be written as {exc.encoding} ({exc.reason}), probably a file name that is not valid "
            "UTF-8. Fix: rename the file, or set PYTHONIOENCODING=utf-8:surrogateescape."
        )
    if isinstance(exc, json.JSONDecodeError):
        return (
            f"a JSON file is malformed (line {exc.lineno} column {exc.colno}: {exc.msg}). Fix: restore or re-create it."
        )
    if type(exc).__name__ == "SafetensorError":
        return (
            f"a safetensors file is corrupt or truncated ({inner or text}). Fix: restore it or use another checkpoint."
        )
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "out of memory. Fix: lower the batch size (eval.batch_size, --batch-size) or the number of workers."
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``vireid`` command line and return the exit status.

    0: success. 2: a clear error: bad input or options, a missing or corrupt file, a full disk (one line on
    stderr naming the file or key and the fix). 1: a bug in vireid (full traceback, then one line asking
    for a report). 130: interrupted. With ``VIREID_DEBUG=1`` every error shows its full traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from vireid import __version__

        print(__version__)
        return 0
    if not getattr(args, "handler", None):
        parser.print_help()
        return 1
    debug = os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
    prefix = f"vireid {args.command}"
    out_of_range = option_range_error(args)
    if out_of_range:
        print(f"{prefix}: error: {out_of_range}", file=sys.stderr)
        return 2
    try:
        _check_device(args)
        return int(args.handler(args) or 0)
    except VireidError as exc:
        if debug:
            raise
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = explain_environment_error(exc)
        if debug or message is None:
            # A genuine bug: never hidden. The traceback is printed, then a line that says what it is.
            traceback.print_exc()
            print(
                f"{prefix}: internal error ({type(exc).__name__}); this is a bug in vireid. Please report it with "
                "the traceback above.",
                file=sys.stderr,
            )
            return 1
        print(f"{prefix}: error: {message} (set {DEBUG_ENV}=1 to see the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
