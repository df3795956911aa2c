"""Which loss terms move a trained run's retrieval feature? Per-term gradients on the retrieval path.

For each term of a finished run's objective (the weighted parts its training log shows): the term's value, the
norm of its gradient with respect to the parameters the retrieval feature depends on, that norm's share of the
summed norms, and the cosine between the term's gradient and the whole loss's gradient, averaged over a few
training batches at the run's last weights. The retrieval path is found, not listed: the parameters that
``model.extract`` (the feature ``vireid test`` scores) reaches in autograd, for each modality.

Why (issue 15 item 5): a loss value says little about what a term does to the feature that is scored. A term
whose gradient is a tiny share on that path cannot change what the feature learns, however its value looks; a
term with a negative cosine pulls against the rest of the objective. Used on the method ladder's runs to tell a
loss weight that does not suit the budget (a term that is inert or dominant) from a bug.

    python benchmarks/loss_term_gradients.py RUN [RUN ...] [--batches 8] [--json FILE]

RUN is a folder written by ``vireid train`` (for example ``ladder/runs/idkl_full/seed0``); the data must be
where its config says. Batch-norm running statistics move while the batches run (train mode, as in training);
nothing is written to RUN. Methods whose loss exposes no ``LossOutput.terms`` are refused. A method's per-run
state is built as training builds it: its run-start hook (DAKD loads the frozen teacher), then, once the run's
weights are loaded, its epoch-start hook (DAKD's prototypes, MCE's memories from the trained network).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class TermGradient:
    """One term, averaged over batches."""

    name: str
    value: float
    grad_norm: float
    share: float
    cosine_with_total: float


def retrieval_parameters(model: torch.nn.Module, batch, feature: str) -> list[str]:
    """Names of the parameters the retrieval feature depends on (autograd from ``model.extract``)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    reached: set[str] = set()
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for modality in sorted({int(m) for m in batch.modality.tolist()}):
                rows = batch.modality == modality
                feats = model.extract(batch.images[rows][:4], modality, feature=feature)
                grads = torch.autograd.grad(feats.sum(), [p for _, p in named], allow_unused=True)
                reached |= {n for (n, _), g in zip(named, grads, strict=True) if g is not None}
    finally:
        model.train(was_training)
    return [n for n, _ in named if n in reached]


def term_gradients(
    terms: dict[str, torch.Tensor], total: torch.Tensor, params: list[torch.Tensor]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The flattened gradient of each term and of ``total`` with respect to ``params`` (zeros where unused)."""

    def flat(value: torch.Tensor) -> torch.Tensor:
        if not value.requires_grad:
            return torch.zeros(sum(p.numel() for p in params))
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])

    return {name: flat(value) for name, value in terms.items()}, flat(total)


def summarise(per_batch: list[dict[str, tuple[float, torch.Tensor]]], totals: list[torch.Tensor]) -> list[TermGradient]:
    """Mean value, gradient norm and cosine with the total gradient of every term over the batches."""
    names = list(per_batch[0])
    norms = {n: sum(float(b[n][1].norm()) for b in per_batch) / len(per_batch) for n in names}
    summed = sum(norms.values()) or 1.0
    rows = []
    for n in names:
        cosines = []
        for b, total in zip(per_batch, totals, strict=True):
            g = b[n][1]
            denominator = float(g.norm()) * float(total.norm())
            cosines.append(float(g @ total) / denominator if denominator > 0 else 0.0)
        rows.append(
            TermGradient(
                name=n,
                value=sum(b[n][0] for b in per_batch) / len(per_batch),
                grad_norm=norms[n],
                share=norms[n] / summed,
                cosine_with_total=sum(cosines) / len(cosines),
            )
        )
    return rows


def measure(run: str | Path, *, batches: int = 8, device: str = "cpu") -> tuple[list[TermGradient], dict]:
    """Per-term gradients of the finished run ``run`` over ``batches`` training batches at its last weights."""
    from rich.console import Console

    from vireid.config import load_config
    from vireid.engine.checkpoint import load_checkpoint
    from vireid.engine.trainer import Trainer
    from vireid.errors import ConfigError
    from vireid.methods.base import StepContext

    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise SystemExit(f"{run} is not a vireid run folder (no config.yaml); pass a folder `vireid train` wrote.")
    cfg = load_config(run / "config.yaml")
    loaded = load_checkpoint(run, prefer="last")
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(cfg, run_dir=Path(scratch) / "run", device=device, console=Console(quiet=True))
        try:
            trainer._build()  # dataset, model, loader and the method's per-run state, exactly as training does
            missing, unexpected = trainer.model.load_state_dict(loaded.state_dict, strict=False)
            if missing or unexpected:
                raise ConfigError(f"{loaded.path} does not fit the model of {run / 'config.yaml'}: {missing[:3]}")
            model, method = trainer.model, trainer.method
            model.train()
            params_named = dict(model.named_parameters())
            path_names: list[str] | None = None
            per_batch, totals = [], []
            trainer.train_loader.sampler.set_epoch(0)
            if hasattr(method, "on_epoch_start"):  # e.g. DAKD's prototypes, as at the start of every epoch
                method.on_epoch_start(trainer, cfg.train.epochs - 1)
            loader = iter(trainer.train_loader.loader)
            for i in range(batches):
                batch = next(loader).to(trainer.dist.device)
                if path_names is None:
                    path_names = retrieval_parameters(model, batch, cfg.eval.feature)
                ctx = StepContext(
                    epoch=cfg.train.epochs - 1,
                    iteration=i,
                    global_step=trainer.global_step,
                    dist=trainer.dist,
                    cfg=cfg,
                    extras=trainer.method_state,
                )
                out = method.loss(method.forward(trainer.train_model, batch, ctx), batch, ctx)
                if not out.terms:
                    raise SystemExit(f"method {cfg.method!r} exposes no loss terms (LossOutput.terms is empty).")
                grads, total = term_gradients(out.terms, out.total, [params_named[n] for n in path_names])
                per_batch.append({n: (float(out.terms[n].detach()), g) for n, g in grads.items()})
                totals.append(total)
        finally:
            trainer.close()
    facts = {
        "run": str(run),
        "method": cfg.method,
        "checkpoint": str(loaded.path),
        "batches": batches,
        "retrieval_parameters": len(path_names or []),
        "retrieval_numel": sum(params_named[n].numel() for n in path_names or []),
        "total_grad_norm": sum(float(t.norm()) for t in totals) / len(totals),
    }
    return summarise(per_batch, totals), facts


def markdown(rows: list[TermGradient], facts: dict) -> str:
    lines = [
        f"{facts['run']} ({facts['method']}, {facts['batches']} batches; retrieval path: "
        f"{facts['retrieval_parameters']} tensors, {facts['retrieval_numel']:,} values; "
        f"|grad of the whole loss| {facts['total_grad_norm']:.4g})",
        "",
        "| term | value | grad norm on the retrieval path | share | cos with the whole loss's grad |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r.name} | {r.value:.4g} | {r.grad_norm:.4g} | {r.share:.1%} | {r.cosine_with_total:+.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders written by `vireid train`")
    parser.add_argument("--batches", type=int, default=8, help="training batches to average over (default 8)")
    parser.add_argument("--json", default=None, help="also write the rows of every run to this JSON file")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    report = []
    for run in args.runs:
        rows, facts = measure(run, batches=args.batches)
        print(markdown(rows, facts) + "\n", flush=True)
        report.append({**facts, "terms": [r.__dict__ for r in rows]})
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
