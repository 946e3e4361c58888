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

from ..config import TrainConfig, to_dict
from ..data.prepare import format_summary, prepare
from ..data.provenance import training_songs
from ..data.training_cache import TrainingCache, is_cache
from ..errors import CheckpointError, DataError, StemJepaError
from ..fsutil import WriteError, atomic_write_text, clean_stale_temps
from ..models.architecture import check_architecture, tensor_specs
from ..models.checkpoint import check_finite_weights, checkpoint_config, checkpoint_labels, model_state, read_checkpoint
from ..models.checkpoint import training_songs as recorded_songs
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


def fit(cfg: TrainConfig, opts: FitOptions):
    """Train `cfg` on `opts.data` into `opts.out`; returns the path of the last checkpoint."""
    quiet_lightning()
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from .checkpoint_io import AtomicCheckpointIO, os_error
    from .data import ChunkPairDataModule
    from .module import StemJEPAModule

    run_dir = Path(opts.out)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    ckpt_path = None
    # every input is checked before anything in the run folder is written or removed (see rundir.py)
    check_device(opts.device, opts.devices, opts.num_nodes)
    check_run_dir(run_dir)
    clean_stale_temps(ckpt_dir)
    replace_run = False
    inherited = None  # songs recorded by the checkpoint this run resumes or starts from (--init): its encoder saw them
    if opts.resume:
        if not last.is_file():
            raise CheckpointError(f"{last}: nothing to resume (no last.ckpt in {run_dir})")
        previous = read_checkpoint(last)
        saved, inherited = checkpoint_config(previous, last), recorded_songs(previous)
        state = model_state(previous)  # the run's model is built from the file's config: check its size and tensors first
        check_architecture(saved, tensor_specs(state), last, labels=checkpoint_labels(state))
        check_finite_weights(state, last)
        if opts.max_steps is not None:  # extending a run is allowed (it stretches the cosine and EMA schedules)
            saved.max_steps = opts.max_steps
        # loader settings belong to the machine, not the run; everything else comes from the checkpoint
        saved.data.num_workers, saved.data.prefetch_factor = cfg.data.num_workers, cfg.data.prefetch_factor
        cfg = saved
        ckpt_path = str(last)
    elif has_checkpoints(run_dir):
        if not opts.overwrite:
            raise StemJepaError(f"{run_dir} already holds a training run; "
                                "use --resume to continue it or --overwrite to replace it")
        replace_run = True  # done once the new inputs are known good, below
    init = None
    if opts.init and not opts.resume:
        init = read_checkpoint(opts.init)  # a missing or bad --init is reported before the data is decoded
        check_finite_weights(model_state(init), opts.init)

    cache = resolve_data(opts.data, run_dir, cfg.model.frontend.sample_rate, opts.progress, cfg.data.split)
    if cfg.phase == 2 and cfg.model.conditioning.kind == "classes" and cfg.model.conditioning.classes in ("auto", ["auto"]):
        coarse = sorted({s["labels"][0].lower() for song in cache.songs for s in song["stems"] if s["labels"]})
        cfg.model.conditioning.classes = coarse + [cfg.data.unlabelled]
        cfg.model.conditioning.class_fallback = cfg.data.unlabelled
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    warn_if_nothing_logged(cfg)
    module = StemJEPAModule(cfg, labels=data_labels(cache, cfg.data.unlabelled))
    if init is not None:
        inherited = recorded_songs(init)
        try:
            module.model.load_encoder_from(model_state(init))
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{opts.init}: cannot initialise the encoder from it ({str(exc)[:200]})") from None
    datamodule = ChunkPairDataModule(cfg, cache, module.model.chunk_samples)

    accelerator = {"auto": "auto", "cpu": "cpu", "cuda": "gpu", "gpu": "gpu"}[opts.device]
    on_gpu = accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())
    if cfg.precision != "auto":
        precision = cfg.precision
    else:
        precision = "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"
    if precision == "32":
        precision = "32-true"
    strategy = opts.strategy or ("ddp" if opts.devices > 1 or opts.num_nodes > 1 else "auto")
    if replace_run:
        clear_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(to_dict(cfg), indent=1))
    checkpointing = ModelCheckpoint(dirpath=ckpt_dir, filename="step{step:07d}", auto_insert_metric_name=False,
                                    every_n_train_steps=max(1, cfg.checkpoint_every), save_top_k=-1, save_last=True)
    from .callbacks import LearningMonitor, StepProgressBar
    from .songs_record import TrainingSongsRecord

    monitor = LearningMonitor(cfg.data.batch_size)
    callbacks = [checkpointing, monitor, TrainingSongsRecord(training_songs(cache.songs, inherited)), *opts.callbacks]
    if opts.progress:
        callbacks.append(StepProgressBar(refresh_rate=1 if not on_gpu else 20))  # a refresh reads the loss: a device sync
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=opts.devices,
        num_nodes=opts.num_nodes,
        strategy=strategy,
        precision=precision,
        max_steps=cfg.max_steps,
        max_time=timedelta(seconds=opts.max_time) if opts.max_time else None,
        max_epochs=-1,
        logger=[CSVLogger(run_dir, name="logs"), TensorBoardLogger(run_dir, name="tensorboard")],  # a new version per (re)start
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
    started = time.time()
    try:
        with log_writer_errors_in_main_thread():
            # weights_only: loading reads tensors and plain values only; saving writes the whole training state (for
            # --resume), said explicitly so that Lightning does not log that it "defaults" to it
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
            trainer.save_checkpoint(last, weights_only=False)
    except (OSError, RuntimeError) as exc:  # a log or checkpoint write failed (disk full...): checkpoints there stay whole
        cause = os_error(exc)  # torch's zip writer raises a RuntimeError over the OSError of the write
        if cause is None:
            raise
        raise WriteError(cause.filename or run_dir, cause) from None
    if trainer.is_global_zero:
        log.info("trained %d steps in %.1f s", trainer.global_step, time.time() - started)
        if monitor.verdict:
            print(monitor.verdict, flush=True)
    return last
