"""Command-line glue for ``vireid train`` and ``vireid test`` (thin wrappers over the library)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rich.console import Console

from vireid.config import load_config, to_dict
from vireid.engine.logging import LOG_FILE
from vireid.errors import ConfigError


def train_from_cli(
    config: str,
    overrides: list[str],
    *,
    resume: str | None = None,
    allow_config_change=False,
    device: str | None = None,
):
    from vireid.engine.trainer import train

    cfg = load_config(config, overrides)
    if cfg.data.root is None:
        raise ConfigError(
            f"data.root is not set for dataset '{cfg.data.dataset}'.",
            fix="pass it as an override, e.g. `vireid train CONFIG data.root=/data/SYSU-MM01`.",
        )
    result = train(cfg, resume=resume, allow_config_change=allow_config_change, device=device)
    if result.interrupted:
        return result
    lines = [f"[bold green]done[/] run folder: {result.run_dir}"]
    if result.best_metrics:
        m = result.best_metrics
        lines.append(
            f"best on {m.get('split', 'val')} (epoch {m.get('epoch')}): R1 {m['rank1']:.2f}  mAP {m['mAP']:.2f}  "
            f"mINP {m['mINP']:.2f}"
        )
    lines.append(f"test it with: vireid test {result.run_dir}")
    console = Console()
    for line in lines:
        console.print(line)
    log = Path(result.run_dir) / LOG_FILE
    if log.is_file():  # the closing summary belongs to the run's log too (main rank only writes one)
        with log.open("a", encoding="utf-8") as fh:
            Console(file=fh, no_color=True, highlight=False, soft_wrap=True).print(*lines, sep="\n")
    return result


def test_from_cli(
    checkpoint: str | list[str],
    *,
    dataset=None,
    root=None,
    protocols=None,
    out=None,
    rerank=None,
    flip=None,
    visualize=0,
    trials=None,
    overrides=(),
    device=None,
    amp="none",
):
    from vireid.engine.loading import load_model
    from vireid.engine.testing import test_checkpoint

    models = []
    for path in [checkpoint] if isinstance(checkpoint, str | Path) else checkpoint:
        lm = load_model(path, device=device)
        if overrides:
            lm = dataclasses.replace(lm, cfg=load_config(to_dict(lm.cfg), list(overrides), method=lm.meta["method"]))
        models.append(lm)
    return test_checkpoint(
        models if len(models) > 1 else models[0],
        dataset=dataset,
        root=root,
        protocols=protocols,
        out=Path(out) if out else None,
        rerank=rerank,
        flip=flip,
        visualize=visualize,
        trials=trials,
        device=device,
        amp=amp,
    )
