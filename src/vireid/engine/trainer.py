"""The training loop shared by every method.

One :class:`Trainer` drives any registered method: data loading through the method's sampler, AMP,
gradient clipping, epoch-based schedules, periodic evaluation on a validation split, checkpoints that
resume exactly (sampler position, every RNG state, optimiser, scheduler, AMP scaler), logging to console,
JSONL and TensorBoard, and DDP under ``torchrun``.

Checkpoint selection never looks at the test split unless ``eval.selection=test`` and
``eval.allow_test_selection=true`` are both set; such runs are labelled in every output.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from vireid.config import RunConfig, config_diff, dump_yaml, to_dict, validate_ranges
from vireid.engine.checkpoint import (
    CheckpointManager,
    atomic_write_text,
    load_checkpoint,
    load_trainer_state,
    nonfinite_tensors,
    rng_state,
    set_rng_state,
)
from vireid.engine.distributed import DistContext, barrier, gather_batch_fields, init_distributed
from vireid.engine.logging import RunLogger, training_progress
from vireid.engine.optim import build_optimizer, build_scheduler
from vireid.engine.sync_batchnorm import convert_sync_batchnorm
from vireid.errors import CheckpointError, ConfigError, TrainingError
from vireid.files import RunLock, clean_orphaned_temp_folders, create_owned_folder
from vireid.methods.base import StepContext


@dataclass
class TrainResult:
    """What a finished (or interrupted) run produced."""

    run_dir: Path
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    selection: str
    best_metrics: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    global_step: int = 0


def default_run_name(cfg: RunConfig) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{cfg.method}-{cfg.data.dataset}-{stamp}"


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device`` (``None`` = full fp32)."""
    if mode == "none" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16":
        return torch.bfloat16
    # auto on CUDA
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _float32(obj: Any) -> Any:
    """Cast floating tensor fields of an output dataclass to fp32 so every loss runs in full precision."""
    if not dataclasses.is_dataclass(obj):
        return obj
    changes = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float32:
            changes[f.name] = value.float()
    return dataclasses.replace(obj, **changes) if changes else obj


class _StopFlag:
    """Set by SIGINT/SIGTERM so the loop stops at the next step boundary and writes a resumable checkpoint."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # pragma: no cover - exercised manually
        if self.requested:  # second Ctrl-C: give up immediately
            raise KeyboardInterrupt
        self.requested = True

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class Trainer:
    """Train ``cfg.method`` as configured. Use :meth:`fit`; see :func:`train` for the one-call API.

    Args:
        cfg: a resolved run config (``vireid.config.load_config``).
        run_dir: run folder; default ``<train.out_dir>/<train.name or a timestamped name>``.
        resume: a run folder (or checkpoint folder) to continue exactly.
        allow_config_change: resume even if the config differs from the stored one (differences are logged).
        stop_after_iters: stop (with a resumable checkpoint) once this many global steps are done; used to
            simulate interruptions in tests.
        device: force a device (default: ``cuda:<local_rank>`` if available, else CPU); checked to exist.
    """

    def __init__(
        self,
        cfg: RunConfig,
        *,
        run_dir: str | Path | None = None,
        resume: str | Path | None = None,
        allow_config_change: bool = False,
        stop_after_iters: int | None = None,
        device: str | None = None,
        console=None,
    ):
        from vireid.methods.registry import TRAINING_HOOKS, get_method, missing_hooks

        self.cfg = cfg
        self.method = get_method(cfg.method)
        missing = missing_hooks(self.method, TRAINING_HOOKS)
        if missing:
            raise ConfigError(
                f"method '{cfg.method}' cannot be trained: it lacks {', '.join(missing)}.",
                fix="see 'Method contract' in docs/architecture.md for the hooks `vireid train` calls.",
            )
        self.dist: DistContext = init_distributed(device)
        self.stop_after_iters = stop_after_iters
        self._check_selection()
        validate_ranges(cfg, source="run config")  # configs built in Python skip load_config's check
        self._lock: RunLock | None = None
        try:
            self.run_dir = self._prepare_run_dir(run_dir, resume, allow_config_change)
            self.logger = RunLogger(self.run_dir, enabled=self.dist.is_main, console=console)
        except BaseException:
            self.close()
            raise
        self.ckpt = CheckpointManager(self.run_dir, keep_last=cfg.train.keep_last)
        self.start_epoch = 0
        self.start_iter = 0
        self.global_step = 0
        self.best_value: float | None = None
        self.best_metrics: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.method_state: dict[str, Any] = {}
        """Per-run objects a method keeps outside the model (DAKD's frozen teacher and prototypes, MCE's
        memories); handed to every step as ``StepContext.extras``. Never part of the model's state dict."""
        self._resume_source = resume

    # ------------------------------------------------------------------------------------------- set-up

    def _check_selection(self) -> None:
        ev = self.cfg.eval
        if ev.selection == "test" and not ev.allow_test_selection:
            raise ConfigError(
                "eval.selection=test picks checkpoints on the test split, which makes reported numbers optimistic.",
                fix="use eval.selection=val (default) or last; if you really want it, also set "
                "eval.allow_test_selection=true (every output is then labelled).",
            )

    def close(self) -> None:
        """Release the run folder's lock (done by :meth:`fit` when it returns or fails)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _lock_run(self, run_dir: Path) -> None:
        """Hold the run folder for the whole run (main rank), then remove temporary folders that a killed
        process left in ``checkpoints/``: under the lock no other writer can be busy there."""
        if not self.dist.is_main:
            return
        self._lock = RunLock.acquire(run_dir)
        clean_orphaned_temp_folders(run_dir / "checkpoints", assume_orphaned=True)

    @staticmethod
    def _holds_checkpoints(run_dir: Path) -> bool:
        # Hidden entries are temporaries of vireid's atomic writes (orphans are cleaned under the lock).
        folder = run_dir / "checkpoints"
        return folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir())

    def _prepare_run_dir(self, run_dir, resume, allow_config_change) -> Path:
        cfg = self.cfg
        if resume is not None:
            path = Path(resume)
            if (path / "model.safetensors").is_file():  # a checkpoint folder: its run is two levels up
                path = path.parent.parent
            stored = path / "config.yaml"
            if not stored.is_file():
                raise CheckpointError(
                    f"cannot resume: {path} is not a vireid run folder (no config.yaml).",
                    fix="pass the folder that `vireid train` created (it holds config.yaml and checkpoints/).",
                )
            old = yaml.safe_load(stored.read_text())
            new = to_dict(cfg)
            diffs = [d for d in config_diff(old, new) if not d.startswith(("train.progress", "data.workers"))]
            if diffs and not allow_config_change:
                raise ConfigError(
                    f"cannot resume {path}: the config differs from the stored one: " + "; ".join(diffs[:8]),
                    fix="resume with the same config, or pass --allow-config-change (the change is logged).",
                )
            self._config_changes = diffs
            self._lock_run(path)
            return path
        self._config_changes = []
        if run_dir is None:
            run_dir = Path(cfg.train.out_dir) / (cfg.train.name or default_run_name(cfg))
        run_dir = Path(run_dir)
        refusal = ConfigError(
            f"run folder {run_dir} already holds checkpoints.",
            fix=f"resume it with `vireid train CONFIG --resume {run_dir}`, or choose another train.name.",
        )
        if self._holds_checkpoints(run_dir):
            raise refusal
        if self.dist.is_main:
            create_owned_folder(run_dir, "run", "run folder (train.out_dir / train.name)")
            self._lock_run(run_dir)
            if self._holds_checkpoints(run_dir):  # another run wrote checkpoints before we held the lock
                raise refusal
            atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
            try:
                from vireid.env_info import collect_info

                info = json.dumps(collect_info(), indent=2, default=str)
            except Exception:  # pragma: no cover - environment probing must never stop training
                info = None
            if info is not None:
                atomic_write_text(run_dir / "env.json", info)
        barrier()
        return run_dir

    def _build(self) -> None:
        from vireid.data.catalog import get_dataset

        cfg, dist = self.cfg, self.dist
        torch.manual_seed(cfg.train.seed)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.dataset = get_dataset(cfg.data.dataset, cfg.data.root, **self._dataset_options())
        holdout = "val" if cfg.eval.selection == "val" else "none"
        self.split = self.dataset.train_split(holdout=holdout, val_ids=cfg.data.val_ids, seed=cfg.train.seed)
        model = self.method.build_model(cfg, self.split.num_classes)
        self.logger.save_load_report(model)  # what the pretrained weights did, kept with the run
        model.to(dist.device)
        if cfg.train.channels_last:
            model.to(memory_format=torch.channels_last)
        if dist.enabled and cfg.train.sync_bn:
            model = convert_sync_batchnorm(model, dist.device)
        self.model = model
        if hasattr(self.method, "param_groups"):
            groups = self.method.param_groups(model, cfg)
        elif hasattr(model, "param_groups"):
            groups = model.param_groups()
        else:  # a plugin model without groups: every parameter at the base learning rate
            groups = {"all": list(model.parameters())}
        self.optimizer = build_optimizer(cfg.optim, groups)
        self.scheduler = build_scheduler(cfg.sched, self.optimizer, cfg.train.epochs)
        self.amp_dtype = resolve_amp(cfg.train.amp, dist.device)
        self.scaler = torch.amp.GradScaler(dist.device.type, enabled=self.amp_dtype == torch.float16)
        if dist.enabled:
            ddp_kwargs = {"device_ids": [dist.device.index]} if dist.device.type == "cuda" else {}
            find_unused = bool(getattr(self.method, "find_unused_parameters", False))
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                model, find_unused_parameters=find_unused, **ddp_kwargs
            )
        else:
            self.train_model = model
        loader_cfg = cfg
        if cfg.data.cache and not cfg.data.cache_dir:  # default cache folder: inside the run
            loader_cfg = dataclasses.replace(
                cfg, data=dataclasses.replace(cfg.data, cache_dir=str(self.run_dir / "cache"))
            )
        self.train_loader = self.method.build_train_loader(loader_cfg, self.split, dist)
        if hasattr(self.method, "on_train_start"):
            self.method.on_train_start(self)

    def _dataset_options(self) -> dict[str, Any]:
        data = self.cfg.data
        options: dict[str, Any] = {"strict_counts": data.strict_counts}
        if data.dataset == "regdb":
            options["trial"] = data.trial
        return options

    def _resume(self) -> None:
        if self._resume_source is None:
            return
        folder = self.ckpt.last()
        if folder is None:
            if not self._holds_checkpoints(self.run_dir):
                # Killed before its first checkpoint was complete: resuming = starting that run from the
                # beginning with its stored config (exactly what a fresh start would compute).
                self.logger.print(
                    f"[yellow]{self.run_dir} has no finished checkpoint yet; training it from the beginning.[/]"
                )
                return
            raise CheckpointError(
                f"{self.run_dir} has no resumable checkpoint ({self.ckpt.dir / 'last.json'} is missing).",
                fix="pass a run folder whose checkpoints/last.json exists, or start a new run.",
            )
        loaded = load_checkpoint(folder)
        try:
            missing, unexpected = self.model.load_state_dict(loaded.state_dict, strict=False)
        except RuntimeError as exc:  # shape mismatches (e.g. --allow-config-change with another model.width)
            sizes = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
            raise CheckpointError(
                f"checkpoint {folder} does not fit the model built from the config: "
                + ("; ".join(sizes[:2]) or str(exc).splitlines()[0]),
                fix="--allow-config-change cannot change the model's shape (model.* or the dataset's number of "
                "identities); resume with the stored model settings or start a new run.",
            ) from None
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint {folder} does not fit the model: missing {list(missing)[:5]}, "
                f"unexpected {list(unexpected)[:5]}."
            )
        state = load_trainer_state(folder)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.start_epoch = int(state["epoch"])
        self.start_iter = int(state["iteration"])
        self.global_step = int(state["global_step"])
        self.best_value = state.get("best_value")
        self.best_metrics = json.loads(state.get("best_metrics_json") or "null")
        self.history = json.loads(state.get("history_json") or "[]")
        if hasattr(self.method, "load_extra_state") and "method_state" in state:
            self.method.load_extra_state(self, state["method_state"])
        self.logger.print(
            f"[bold]resumed[/] {self.run_dir} at epoch {self.start_epoch}, iteration {self.start_iter} "
            f"(global step {self.global_step})"
        )
        if self._config_changes:
            self.logger.print(f"[yellow]config changed on resume:[/] {'; '.join(self._config_changes)}")
            self.logger.log("resume", self.global_step, {"config_changes": self._config_changes})

    # -------------------------------------------------------------------------------------- checkpoints

    def _meta(self, epoch: int, iteration: int, metrics: dict[str, Any] | None) -> dict[str, Any]:
        from vireid import __version__

        cfg = self.cfg
        return {
            "vireid_version": __version__,
            "method": cfg.method,
            "task": getattr(self.method, "task", "vireid"),
            "dataset": cfg.data.dataset,
            "trial": cfg.data.trial if cfg.data.dataset == "regdb" else None,
            "num_classes": self.split.num_classes,
            "epoch": epoch,
            "iteration": iteration,
            "global_step": self.global_step,
            "selection": cfg.eval.selection,
            "selection_metric": cfg.eval.select_metric,
            "metrics": metrics or {},
            "config": to_dict(cfg),
            "extra": self.method.checkpoint_extra(self) if hasattr(self.method, "checkpoint_extra") else {},
        }

    def _trainer_state(self, epoch: int, iteration: int) -> dict[str, Any]:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": rng_state(),
            "epoch": epoch,
            "iteration": iteration,
            "global_step": self.global_step,
            "best_value": self.best_value,
            "best_metrics_json": json.dumps(self.best_metrics),
            "history_json": json.dumps(self.history),
        }
        if hasattr(self.method, "extra_state"):
            state["method_state"] = self.method.extra_state(self)
        return state

    def save(self, epoch: int, iteration: int, *, best: bool = False, metrics=None) -> Path | None:
        """Write a resumable checkpoint whose resume position is (``epoch``, ``iteration``)."""
        path = None
        if self.dist.is_main:
            path = self.ckpt.save(
                f"s{self.global_step:08d}",
                model_state=self.model.state_dict(),
                meta=self._meta(epoch, iteration, metrics),
                trainer_state=self._trainer_state(epoch, iteration),
                best=best,
            )
        barrier()
        return path

    # ------------------------------------------------------------------------------------------ training

    def fit(self) -> TrainResult:
        try:
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> TrainResult:
        self.logger.attach_library_logging()  # warnings and load reports reach the console and log.txt
        try:
            self._build()
            self._resume()
        except BaseException as exc:
            self.logger.print(f"error: {type(exc).__name__}: {exc}", markup=False)
            self.logger.close()
            raise
        cfg = self.cfg
        stop = _StopFlag()
        stop.install()
        interrupted = False
        try:
            if self.dist.is_main:
                self.logger.print(
                    f"[bold]vireid train[/] method={cfg.method} dataset={cfg.data.dataset} "
                    f"ids={self.split.num_classes} images={len(self.split.records)} device={self.dist.device} "
                    f"world={self.dist.world_size} amp={self.amp_dtype} selection={cfg.eval.selection} "
                    f"run={self.run_dir}"
                )
            for epoch in range(self.start_epoch, cfg.train.epochs):
                first_iter = self.start_iter if epoch == self.start_epoch else 0
                interrupted = self._train_epoch(epoch, first_iter, stop)
                if interrupted:
                    break
                self.scheduler.step()
                is_last = epoch + 1 == cfg.train.epochs
                metrics, best = self._maybe_validate(epoch, is_last)
                best = best or (is_last and cfg.eval.selection == "last")  # the last epoch is the selected model
                if best or is_last or (epoch + 1) % max(1, cfg.train.checkpoint_every) == 0:
                    self.save(epoch + 1, 0, best=best, metrics=metrics)
        except BaseException as exc:  # the reason a run stopped belongs in its log.txt too
            self.logger.print(f"error: {type(exc).__name__}: {exc}", markup=False)
            self.logger.close()
            raise
        finally:
            stop.uninstall()
        if interrupted and self.dist.is_main:
            self.logger.print(
                f"[yellow]stopped at global step {self.global_step}; continue with[/] "
                f"vireid train {self.run_dir / 'config.yaml'} --resume {self.run_dir}"
            )
        self.logger.close()
        barrier()
        best_path = self.ckpt.dir / "best" if (self.ckpt.dir / "best").is_dir() else None
        return TrainResult(
            run_dir=self.run_dir,
            last_checkpoint=self.ckpt.last(),
            best_checkpoint=best_path,
            selection=cfg.eval.selection,
            best_metrics=self.best_metrics,
            history=self.history,
            interrupted=interrupted,
            global_step=self.global_step,
        )

    def _train_epoch(self, epoch: int, first_iter: int, stop: _StopFlag) -> bool:
        """Run one epoch from ``first_iter``; return True if training must stop (interrupt / stop_after)."""
        cfg, dist = self.cfg, self.dist
        tl = self.train_loader
        tl.sampler.set_epoch(epoch)
        tl.sampler.set_position(first_iter)
        if hasattr(self.method, "on_epoch_start"):
            self.method.on_epoch_start(self, epoch)
        self.train_model.train()
        total = first_iter + len(tl.sampler)
        lr = self.optimizer.param_groups[0]["lr"]
        progress = training_progress(self.logger.console, enabled=dist.is_main and cfg.train.progress)
        window_images, window_start = 0, time.perf_counter()
        rate = 0.0
        with progress:
            task = progress.add_task(
                f"epoch {epoch + 1}/{cfg.train.epochs}", total=total, completed=first_iter, rate=0.0, loss=float("nan")
            )
            for iteration, batch in enumerate(tl.loader, start=first_iter):
                batch = batch.to(dist.device, non_blocking=True)
                ctx = StepContext(
                    epoch=epoch,
                    iteration=iteration,
                    global_step=self.global_step,
                    dist=dist,
                    cfg=cfg,
                    extras=self.method_state,
                )
                loss = self._step(batch, ctx)
                self.global_step += 1
                window_images += tl.images_per_batch
                values = loss.scalars()
                if (iteration + 1) % max(1, cfg.train.log_every) == 0 or iteration + 1 == total:
                    now = time.perf_counter()
                    rate = window_images / max(now - window_start, 1e-9)
                    window_images, window_start = 0, now
                    self.logger.log(
                        "train",
                        self.global_step,
                        {"epoch": epoch, "iteration": iteration, "lr": lr, "img_per_s": rate, **values},
                    )
                progress.update(task, advance=1, rate=rate, loss=values["loss"])
                every = cfg.train.checkpoint_every_iters
                if every and self.global_step % every == 0 and iteration + 1 < total:
                    self.save(epoch, iteration + 1)
                if (self.stop_after_iters is not None and self.global_step >= self.stop_after_iters) or stop.requested:
                    self.save(epoch, iteration + 1)
                    return True
        return False

    def _step(self, batch, ctx: StepContext):
        cfg = self.cfg
        with torch.autocast(
            self.dist.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            outputs = self.method.forward(self.train_model, batch, ctx)
        rows = len(batch)
        outputs = _float32(gather_batch_fields(outputs, rows))
        global_batch = gather_batch_fields(batch, rows, exclude=("images",))
        loss = self.method.loss(outputs, global_batch, ctx)
        if not torch.isfinite(loss.total):
            parts = ", ".join(f"{k}={float(v):.4g}" for k, v in loss.parts.items())
            raise TrainingError(
                f"the loss became {float(loss.total)} at epoch {ctx.epoch + 1}, iteration {ctx.iteration} "
                f"(global step {ctx.global_step}); parts: {parts or 'n/a'}.",
                fix="lower optim.lr, set train.grad_clip (e.g. 5.0), use train.amp=none or bf16 instead of fp16, "
                "and check the data for broken images; the last good checkpoint is in "
                f"{self.ckpt.dir}.",
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss.total).backward()
        if cfg.train.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._check_finite_weights(ctx, loss)
        return loss

    def _check_finite_weights(self, ctx: StepContext, loss) -> None:
        """Stop as soon as an optimiser step leaves a NaN/inf parameter or buffer, before any checkpoint
        could hold it: the loss of that step was still finite, so the loss check alone is not enough."""
        bad = nonfinite_tensors(self.model.state_dict())
        if not bad:
            return
        last = self.ckpt.last()
        kept = (
            f"the last finite checkpoint is {last} and checkpoints/last.json still points to it"
            if last is not None
            else "no checkpoint had been written yet"
        )
        raise TrainingError(
            f"the weights became NaN/infinite after the optimiser step at epoch {ctx.epoch + 1}, iteration "
            f"{ctx.iteration} (global step {ctx.global_step}; loss {float(loss.total):.4g}): {len(bad)} tensors, "
            f"e.g. {', '.join(bad[:3])}. Nothing was saved from this state; {kept}.",
            fix="lower optim.lr or set train.grad_clip (e.g. 5.0), then resume from the last checkpoint or start "
            "a new run.",
        )

    # ---------------------------------------------------------------------------------------- evaluation

    def _maybe_validate(self, epoch: int, is_last: bool) -> tuple[dict[str, Any] | None, bool]:
        cfg = self.cfg
        if cfg.eval.selection == "last":
            return None, False
        every = cfg.eval.every
        due = is_last or (every > 0 and (epoch + 1) % every == 0)
        if not due:
            return None, False
        metrics = None
        if self.dist.is_main:
            metrics = self.evaluate_selection_split()
            metrics["epoch"] = epoch + 1
            self.history.append(metrics)
            self.logger.log(metrics["split"], self.global_step, {k: v for k, v in metrics.items() if k != "split"})
            label = "[red]TEST split (selection on test)[/]" if metrics["split"] == "test" else "val"
            self.logger.print(
                f"epoch {epoch + 1}: {label} R1 {metrics['rank1']:.2f}  mAP {metrics['mAP']:.2f}  "
                f"mINP {metrics['mINP']:.2f}"
            )
        from vireid.engine.distributed import broadcast_object

        metrics = broadcast_object(metrics)
        value = metrics[cfg.eval.select_metric]
        best = self.best_value is None or value > self.best_value or (math.isnan(self.best_value))
        if best:
            self.best_value = value
            self.best_metrics = metrics
        return metrics, best

    def selection_trials(self):
        """Trials that choose the checkpoint: validation identities, or (only when allowed) the test split."""
        if self.cfg.eval.selection == "test":
            protocol_id = (self.cfg.eval.protocols or self.dataset.standard_protocols())[0]
            return list(self.dataset.protocol(protocol_id).trials()), "test"
        if not self.split.val_trials:
            raise ConfigError(
                f"eval.selection=val but dataset '{self.cfg.data.dataset}' produced no validation identities.",
                fix="set data.val_ids to a positive number, or use eval.selection=last.",
            )
        return list(self.split.val_trials), "val"

    def evaluate_selection_split(self) -> dict[str, Any]:
        from vireid.evaluation.runner import run_protocol

        trials, split = self.selection_trials()
        embedder = self.method.embedder(self.model, self.cfg)
        result = run_protocol(
            trials,
            embedder,
            transform=self.method.test_transform(self.cfg),
            batch_size=self.cfg.eval.batch_size,
            workers=0,
            device=self.dist.device,
            flip=self.cfg.eval.flip,
            progress=False,
            thermal_gray3=self.cfg.data.thermal_gray3,
            selection_split=split,
        )
        self.model.train()
        mean = result.mean
        return {
            "split": split,
            "protocol": result.protocol_id,
            "rank1": float(mean["R1"]),
            "mAP": float(mean["mAP"]),
            "mINP": float(mean["mINP"]),
        }


def train(cfg: RunConfig, **kwargs) -> TrainResult:
    """Train ``cfg`` and return the :class:`TrainResult` (see :class:`Trainer` for keyword arguments)."""
    return Trainer(cfg, **kwargs).fit()
