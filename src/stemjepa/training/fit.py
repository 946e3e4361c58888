"""`stemjepa fit`: train one phase from a training cache (or a multitrack folder, prepared into a cache on the fly)."""
from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch

from ..config import TrainConfig, resolve_config, to_dict
from ..data.prepare import format_summary, prepare
from ..data.provenance import training_songs
from ..data.training_cache import TrainingCache, is_cache
from ..errors import CheckpointError, DataError, StemJepaError
from ..fsutil import WriteError, atomic_write_text, clean_stale_temps
from ..models.architecture import check_architecture, tensor_specs
from ..models.checkpoint import check_finite_weights, checkpoint_config, checkpoint_labels, model_state, read_checkpoint
from ..models.checkpoint import training_songs as recorded_songs
from .init_from import InitWeights, apply_init, read_init
from .rundir import check_data_path, check_device, check_run_dir, clear_run, has_checkpoints

log = logging.getLogger(__name__)


@dataclass
class FitOptions:
    data: str
    out: str
    init: str | None = None
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"  # auto | cpu | cuda
    devices: int = 1
    num_nodes: int = 1
    progress: bool = True
    strategy: str | None = None
    max_steps: int | None = None  # with --resume: a new total number of steps
    callbacks: list = field(default_factory=list)  # extra Lightning callbacks (programmatic use)
    max_time: float | None = None  # seconds: stop earlier than max_steps when the time is up (time-boxed runs)


def prepare_folder_cache(folder: Path, cache_dir: Path, sample_rate: int, progress: bool = True) -> Path:
    """Decode a generic multitrack folder into a training cache once, as `stemjepa prepare --dataset folder` does
    (resumable, changed songs prepared again); bad songs and stems are reported and skipped."""
    result = prepare("folder", folder, cache_dir, sample_rate=sample_rate, progress=progress)
    if result.skipped:
        print(format_summary(result))
    return cache_dir


def resolve_data(data: str, run_dir: Path, sample_rate: int, progress: bool, split: str | None = None) -> TrainingCache:
    """The training cache for `data` (a cache, or a folder prepared on first use), restricted to `split` (songs without a
    split are always kept)."""
    path = check_data_path(data)
    if is_cache(path):
        cache_dir = path
    else:
        cache_dir = path / ".stemjepa_cache"
        if not (path.is_dir() and any(path.iterdir())):
            raise DataError(f"{path}: empty folder (expected song folders with a stems.json, or a cache from `stemjepa prepare`)")
        try:
            prepare_folder_cache(path, cache_dir, sample_rate, progress)
        except PermissionError:
            cache_dir = run_dir / "cache"
            prepare_folder_cache(path, cache_dir, sample_rate, progress)
    cache = TrainingCache(cache_dir, split=split)
    if cache.sample_rate != sample_rate:
        raise DataError(f"{cache_dir}: cache holds {cache.sample_rate} Hz audio but the model expects {sample_rate} Hz; "
                        f"prepare it again with --sample-rate {sample_rate}")
    return cache


def data_labels(cache: TrainingCache, unlabelled: str) -> list[str]:
    labels = {unlabelled}
    for song in cache.songs:
        for stem in song["stems"]:
            labels.update(stem["labels"])
    return sorted(labels)


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def quiet_lightning() -> None:
    """Keep Lightning's useful INFO lines, drop its adverts and a deprecation warning of its own internals."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    # speaks of epochs and a Trainer argument; `fit` says it in its own words (see `warn_if_nothing_logged`)
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    # untrue here: the sampler starts a resumed run at the batch after the last one trained (training/data.py;
    # tests/test_training.py checks that a resumed run continues identically)
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")


def warn_if_nothing_logged(cfg: TrainConfig) -> None:
    if cfg.log_every and cfg.max_steps < cfg.log_every:
        log.warning("max_steps %d is below log_every %d: no training figures (loss, top-1, spread) will be logged and "
                    "no verdict given; pass log_every=%d to see them", cfg.max_steps, cfg.log_every, cfg.max_steps)


@contextlib.contextmanager
def log_writer_errors_in_main_thread():
    """TensorBoard writes its event file from a thread; a failed write (a full disk) would print that thread's traceback,
    and is raised again in the main thread at the next log call, where `fit` reports it in one line. So the thread's
    OSErrors are not printed while this is active."""
    previous = threading.excepthook

    def hook(args):
        if issubclass(args.exc_type, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
            return
        previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def _resumed_config(cfg: TrainConfig, last: Path, opts: FitOptions) -> tuple[TrainConfig, dict | None]:
    """The config of the run `last` continues, from the checkpoint (its sizes and tensors checked first: the run's model
    is built from it), with a new total of steps if asked and this machine's loader settings; and the songs it records."""
    if not last.is_file():
        raise CheckpointError(f"{last}: nothing to resume (no last.ckpt in {last.parent.parent})")
    previous = read_checkpoint(last)
    saved = checkpoint_config(previous, last)
    state = model_state(previous)
    check_architecture(saved, tensor_specs(state), last, labels=checkpoint_labels(state))
    check_finite_weights(state, last)
    if opts.max_steps is not None:  # extending a run is allowed (it stretches the cosine and EMA schedules)
        saved.max_steps = opts.max_steps
    # loader settings belong to the machine, not the run; everything else comes from the checkpoint
    saved.data.num_workers, saved.data.prefetch_factor = cfg.data.num_workers, cfg.data.prefetch_factor
    return saved, recorded_songs(previous)


def _read_init(opts: FitOptions) -> InitWeights | None:
    """The --init model (a new run only: a .ckpt, an export or a built-in name), read and checked before the data is
    decoded."""
    if not opts.init or opts.resume:
        return None
    return read_init(opts.init)


def _lightning_precision(cfg: TrainConfig, on_gpu: bool) -> str:
    """"auto": bf16 autocast where bf16 is native (a CUDA card that has it; a CPU with AVX512-BF16 / AMX: a 256-d x 4
    layer step 1.45x faster here, 1.05x at 128 d x 3), fp32 elsewhere (an AVX2-only CPU runs bf16 about 10x slower)."""
    if cfg.precision != "auto":
        return "32-true" if cfg.precision == "32" else cfg.precision
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    from ..models.precision import cpu_has_native_bf16

    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def _trainer(cfg: TrainConfig, opts: FitOptions, run_dir: Path, callbacks: list):
    """The Lightning Trainer of a run: loggers in `run_dir` (a new version per (re)start), atomic checkpoint writes."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from .checkpoint_io import AtomicCheckpointIO

    accelerator = {"auto": "auto", "cpu": "cpu", "cuda": "gpu", "gpu": "gpu"}[opts.device]
    on_gpu = accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())
    if opts.progress:
        from .callbacks import StepProgressBar

        callbacks = [*callbacks, StepProgressBar(refresh_rate=1 if not on_gpu else 20)]  # a refresh reads the loss: a sync
    return L.Trainer(
        accelerator=accelerator,
        devices=opts.devices,
        num_nodes=opts.num_nodes,
        strategy=opts.strategy or ("ddp" if opts.devices > 1 or opts.num_nodes > 1 else "auto"),
        precision=_lightning_precision(cfg, on_gpu),
        max_steps=cfg.max_steps,
        max_time=timedelta(seconds=opts.max_time) if opts.max_time else None,
        max_epochs=-1,
        logger=[CSVLogger(run_dir, name="logs"), TensorBoardLogger(run_dir, name="tensorboard")],
        callbacks=callbacks,
        log_every_n_steps=max(1, cfg.log_every),
        enable_progress_bar=opts.progress,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=False,
        plugins=[AtomicCheckpointIO()],
    )


def _train(trainer, module, datamodule, ckpt_path: str | None, last: Path, run_dir: Path) -> None:
    """trainer.fit, then the last checkpoint; a failed write (disk full...) is one WriteError (checkpoints there stay
    whole)."""
    from .checkpoint_io import os_error

    try:
        with log_writer_errors_in_main_thread():
            # weights_only: loading reads tensors and plain values only; saving writes the whole training state (for
            # --resume), said explicitly so that Lightning does not log that it "defaults" to it
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
            trainer.save_checkpoint(last, weights_only=False)
    except (OSError, RuntimeError) as exc:
        cause = os_error(exc)  # torch's zip writer raises a RuntimeError over the OSError of the write
        if cause is None:
            raise
        raise WriteError(cause.filename or run_dir, cause) from None


def fit(cfg: TrainConfig, opts: FitOptions):
    """Train `cfg` on `opts.data` into `opts.out`; returns the path of the last checkpoint. The run's config.json holds
    the trained config (`resolve_config`), the one every checkpoint saves."""
    quiet_lightning()
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from .callbacks import LearningMonitor
    from .data import ChunkPairDataModule
    from .module import StemJEPAModule
    from .songs_record import TrainingSongsRecord

    run_dir = Path(opts.out)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    # every input is checked before anything in the run folder is written or removed (see rundir.py)
    check_device(opts.device, opts.devices, opts.num_nodes)
    check_run_dir(run_dir)
    clean_stale_temps(ckpt_dir)
    inherited = None  # songs recorded by the checkpoint this run resumes or starts from (--init): its encoder saw them
    if opts.resume:
        cfg, inherited = _resumed_config(cfg, last, opts)
    elif has_checkpoints(run_dir) and not opts.overwrite:
        raise StemJepaError(f"{run_dir} already holds a training run; "
                            "use --resume to continue it or --overwrite to replace it")
    replace_run = not opts.resume and has_checkpoints(run_dir)  # done once the new inputs are known good, below
    init = _read_init(opts)
    cache = resolve_data(opts.data, run_dir, cfg.model.frontend.sample_rate, opts.progress, cfg.data.split)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    cfg = resolve_config(cfg, cache)
    warn_if_nothing_logged(cfg)
    module = StemJEPAModule(cfg, labels=data_labels(cache, cfg.data.unlabelled))
    if init is not None:
        inherited = init.songs
        log.info("initialised from %s: %s", init.ref, apply_init(module.model, init))
    datamodule = ChunkPairDataModule(cfg, cache, module.model.chunk_samples)
    if replace_run:
        clear_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(to_dict(cfg), indent=1))
    checkpointing = ModelCheckpoint(dirpath=ckpt_dir, filename="step{step:07d}", auto_insert_metric_name=False,
                                    every_n_train_steps=max(1, cfg.checkpoint_every), save_top_k=-1, save_last=True)
    monitor = LearningMonitor(cfg.data.batch_size)
    songs = TrainingSongsRecord(training_songs(cache.songs, inherited))
    trainer = _trainer(cfg, opts, run_dir, [checkpointing, monitor, songs, *opts.callbacks])
    started = time.time()
    _train(trainer, module, datamodule, str(last) if opts.resume else None, last, run_dir)
    if trainer.is_global_zero:
        log.info("trained %d steps in %.1f s", trainer.global_step, time.time() - started)
        if monitor.verdict:
            print(monitor.verdict, flush=True)
    return last
