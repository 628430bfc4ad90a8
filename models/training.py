"""The training loop: seeded, shuffled mini-batch training and evaluation on uint8 image tensors, no I/O."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from models import augment as augmenting
from models.augment import Augment
from models.checkpoint import Checkpoint, capture, restore
from models.determinism import deterministic, watch_alerts
from models.evaluation import evaluate, normalize
from models.layers import build_sequential
from models.optimizer import make_optimizer, scheduler, scheduler_state
from models.precision import autocast, memory_format
from models.splits import validation_split
from models.steps import GraphedStep, Step
from models.stopping import EarlyStopping, EarlyStoppingConfig

Progress = Callable[[dict[str, Any]], None]


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run."""

    epochs: int = 1
    batch_size: int = 64
    optimizer: str = "adam"  # adam | adamw | sgd
    learning_rate: float = 1e-3
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | auto
    precision: str = "fp32"  # fp32 | bf16, as resolve_precision returns it
    eval_batch_size: int = 256  # on CPU, 1024-image activations (100 MB) cost 1.7x the time
    checkpoint_every_s: float = 60.0  # mid-epoch checkpoints at least this often (with on_checkpoint)
    progress_every_s: float = 0.5  # a report reads the running sums back: on a GPU, a sync not worth making per step
    # On CUDA, each full batch's step replays one captured graph (models/steps.py). Off until a GPU run shows it
    # trains exactly as the eager step and pays (bench/gpu.sh measures both; README, Benchmarks).
    cuda_graphs: bool = False
    # The recipe (SPEC §5); these defaults are the plain recipe, which trains exactly as before they existed.
    augment: Augment | None = None  # drawn per sample and epoch on the device (models/augment.py)
    schedule: str = "constant"  # constant | onecycle | cosine, stepped per batch; learning_rate is the peak
    warmup_epochs: float = 0.0  # cosine's linear warmup
    label_smoothing: float = 0.0
    validation_split: float = 0.0  # share of the training images held out, per class, seeded
    early_stopping: EarlyStoppingConfig | None = None


@dataclass
class RunState:
    """Where one run is and what it has summed: with the model and optimizer, all the loop carries between steps."""

    shuffler: torch.Generator  # its own, so every epoch's order is the same on any device
    loss_sum: torch.Tensor  # this epoch's loss × images and correct answers, kept on the device
    correct: torch.Tensor
    seen: int = 0  # images trained on this epoch
    epoch: int = 1
    step: int = 0  # steps done in this epoch
    history: list[dict[str, float]] = field(default_factory=list)


def pick_device(setting: str) -> str:
    """Turn a device setting (cpu, cuda, cuda:N, auto) into a device this machine has."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {setting!r} was asked for but torch finds no CUDA GPU; use 'cpu' or 'auto'")
    if setting != "cpu" and not setting.startswith("cuda"):
        raise ValueError(f"unknown device {setting!r}; use 'cpu', 'cuda' or 'auto'")
    return setting


def seeded_model(layers: list[dict], *, seed: int) -> nn.Sequential:
    """Build the Sequential with weights drawn from `seed`, so a run can be repeated bit for bit."""
    torch.manual_seed(seed)
    return build_sequential(layers)


def _after(first: Callable[[], None], then: Step) -> Step:
    def both(index: torch.Tensor) -> None:
        first()
        then(index)
    return both


def train(
    model: nn.Module,
    *,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    mean: torch.Tensor | Sequence[float],
    std: torch.Tensor | Sequence[float],
    config: TrainConfig,
    on_progress: Progress | None = None,
    resume: Checkpoint | None = None,
    on_checkpoint: Callable[[Checkpoint], None] | None = None,
    on_weights: Callable[[int, nn.Module, dict[str, float] | None, bool], None] | None = None,
    judge: Callable[[dict[str, float]], str | None] | None = None,
) -> dict[str, Any]:
    """Train in place, evaluating after each epoch; returns the last epoch's metrics and the history.

    Images are uint8 N×C×H×W, labels int64. `on_progress` gets a dict on the first step, on each epoch's
    last step and otherwise once `config.progress_every_s` has passed (0: every step), and, with an
    "epoch_done" entry, after each epoch's evaluation; an exception it raises stops training.
    `config.precision` bf16 runs forward and loss under bfloat16 autocast; weights and optimizer state
    stay float32. For bit-identical weights, build the model with `seeded_model(layers, seed=config.seed)`
    and keep data, config, device and torch's thread count the same. A last batch of a single image is
    skipped: BatchNorm cannot train on one sample. The model is left on the CPU, in eval mode, contiguous.
    On CUDA the run uses torch's deterministic kernels; `reproducible` in the result is False, and
    `nondeterministic` names the ops, where one of the network's ops has none (so the weights may differ per run).

    `on_checkpoint` gets a Checkpoint (already copied to the CPU) at every epoch end but the last and at least every
    `config.checkpoint_every_s` at a step boundary; `resume` continues from one: the epoch's order is drawn again
    from the saved generator state and the steps already done are skipped, so the weights end bit-identical to an
    uninterrupted run on the same device, precision and thread count.

    `on_weights(epoch, model, entry, last)` sees the weights at initialisation (epoch 0, entry None; not when
    resuming) and after each epoch's evaluation (its history entry; `last` for the run's final epoch, also one early
    stopping ends it at), before that epoch's checkpoint; it must not change them.

    The recipe fields of `config`: `validation_split` holds out that share of the training images (the history
    then has `val_loss` and `val_accuracy`); `early_stopping` ends the run early (`stopped_early` in the result says
    when and why) and with `restore_best` leaves the best epoch's weights, its metrics the result's. `judge` (a
    sweep's ASHA) sees each epoch's history entry (and, resuming, the last one again); a reason it returns ends the
    run at that epoch, as early stopping does.
    """
    device = torch.device(pick_device(config.device))
    if len(train_images) == 0 or config.epochs < 1 or config.batch_size < 1:
        raise ValueError("training needs images, epochs >= 1 and batch_size >= 1")
    val = None
    if config.validation_split:
        keep, held = validation_split(train_labels, fraction=config.validation_split, seed=config.seed)
        val = (train_images[held], train_labels[held])
        train_images, train_labels = train_images[keep], train_labels[keep]
    stopping = EarlyStopping(config.early_stopping) if config.early_stopping else None
    if stopping and val is None and stopping.config.metric.startswith("val_"):
        raise ValueError(f"early stopping on {stopping.config.metric} needs a validation_split")
    augment = config.augment if config.augment and config.augment.active else None
    autocast(device, config.precision)  # refuses an unresolved precision before any work
    torch.manual_seed(config.seed)  # dropout draws from the global generators
    # the uint8 splits are small; keeping them on the device saves a host copy per batch
    train_images, train_labels = train_images.to(device), train_labels.to(device, torch.int64)
    mean_t, std_t = (torch.as_tensor(v, dtype=torch.float32, device=device) for v in (mean, std))
    n, size, layout = len(train_images), config.batch_size, memory_format(model)
    steps = math.ceil(n / size) - (1 if n > size and n % size == 1 else 0)
    run = RunState(shuffler=torch.Generator().manual_seed(config.seed), loss_sum=torch.zeros((), device=device),
                   correct=torch.zeros((), dtype=torch.int64, device=device))  # updated in place: graphs hold them
    # a graph replays the step's learning rate and has no per-epoch draws: it takes the plain step only
    graphed = config.cuda_graphs and device.type == "cuda" and config.schedule == "constant" and augment is None
    augmenter = augmenting.generator(config.seed, device) if augment else None
    draws: augmenting.Draws = {}
    epoch_augmenter: torch.Tensor | None = None
    stopped_early = halted = None  # halted: why `judge` ended the run
    next_report = 0.0

    def report() -> dict[str, Any]:
        return {"epoch": run.epoch, "epochs": config.epochs, "step": run.step, "steps": steps,
                "fraction": ((run.epoch - 1) * steps + run.step) / (config.epochs * steps),
                "train_loss": run.loss_sum.item() / run.seen, "train_accuracy": run.correct.item() / run.seen}

    setup = {"device": device.type, "precision": config.precision, "threads": torch.get_num_threads()}

    def snapshot(epoch: int, step: int, shuffler: torch.Tensor) -> Checkpoint:
        sums = {"loss_sum": run.loss_sum, "correct": run.correct, "shuffler": shuffler}
        if augmenter is not None:  # mid-epoch, the state the epoch's draws were made from (as for `shuffler`)
            sums["augmenter"] = epoch_augmenter if step else augmenter.get_state()
        sums.update({f"best.{k}": v for k, v in stopping.best_weights.items()} if stopping else {})
        meta = {"seen": run.seen if step else 0, "history": list(run.history), "setup": setup}
        meta.update({"scheduler": scheduler_state(lr_schedule)} if lr_schedule else {})
        return capture(model, optimizer, epoch=epoch, step=step, run=sums, meta=meta)

    def inputs(index: torch.Tensor) -> torch.Tensor:
        images, erased = train_images[index], None
        if augment is not None:
            images, erased = augmenting.apply(images, {k: v[index] for k, v in draws.items()}, cutout=augment.cutout)
        x = normalize(images, mean_t, std_t)
        return (x if erased is None else x.masked_fill(erased, 0.0)).contiguous(memory_format=layout)

    nondeterministic: set[str] = set()  # ops of this run without a deterministic kernel on its device
    try:
        with deterministic(device):  # deterministic kernels cost little for these small networks
            model.to(device, memory_format=layout)
            optimizer = make_optimizer(model, config, graphed=graphed)
            lr_schedule = scheduler(optimizer, schedule=config.schedule, total_steps=config.epochs * steps,
                                    steps_per_epoch=steps, warmup_epochs=config.warmup_epochs)

            def train_step(index: torch.Tensor) -> None:
                x = inputs(index)
                y = train_labels[index]
                with autocast(device, config.precision, cache=not graphed):  # a graph cannot keep autocast's cache
                    output = model(x)
                    loss = F.cross_entropy(output, y, label_smoothing=config.label_smoothing)
                loss.backward()
                optimizer.step()
                if lr_schedule is not None:
                    lr_schedule.step()
                run.loss_sum.add_(loss.detach() * len(index))
                run.correct.add_((output.detach().argmax(1) == y).sum())

            def zero_grad() -> None:
                optimizer.zero_grad(set_to_none=True)

            step = (GraphedStep(train_step, size=size, zero_grad=zero_grad, device=device) if graphed
                    else _after(zero_grad, train_step))
            first, done = 1, 0  # where the loop starts: epoch `first` with `done` of its steps already trained
            if resume is not None:
                saved = restore(resume, model, optimizer, device)
                run.shuffler.set_state(saved["shuffler"].cpu())  # as it was when that epoch's order was drawn
                run.loss_sum.copy_(saved["loss_sum"])
                run.correct.copy_(saved["correct"])
                run.seen = resume.meta["seen"]
                run.history, first, done = list(resume.meta["history"]), resume.epoch, resume.step
                if augmenter is not None:
                    augmenter.set_state(saved["augmenter"].cpu())
                if lr_schedule is not None:
                    lr_schedule.load_state_dict(resume.meta["scheduler"])
                if stopping is not None:
                    stopping.replay(run.history)
                    stopping.best_weights = {k[5:]: v.cpu() for k, v in saved.items() if k.startswith("best.")}
                halted = judge(run.history[-1]) if judge is not None and run.history else None
            if resume is None and on_weights is not None:
                on_weights(0, model, None, False)
            next_checkpoint = time.monotonic() + config.checkpoint_every_s
            for run.epoch in range(first, config.epochs + 1):  # the loop's position lives in `run`, with the rest
                if stopping is not None and stopping.stop:  # judged at the end of the epoch before
                    stopped_early = {"epoch": run.epoch - 1, "reason": stopping.reason()}
                    break
                if halted:
                    stopped_early = {"epoch": run.epoch - 1, "reason": halted}
                    break
                model.train()
                epoch_shuffler = run.shuffler.get_state()
                order = torch.randperm(n, generator=run.shuffler).to(device)
                if augment is not None:
                    epoch_augmenter = augmenter.get_state()
                    draws = augmenting.draw(augment, n=n, height=train_images.shape[2], width=train_images.shape[3],
                                            generator=augmenter)
                if not done:
                    run.loss_sum.zero_()
                    run.correct.zero_()
                    run.seen = 0
                for run.step in range(done + 1, steps + 1):
                    index = order[(run.step - 1) * size : run.step * size]
                    # every step runs the same ops, so the first one shows which of them have no deterministic kernel
                    with watch_alerts(nondeterministic) if run.step == done + 1 else contextlib.nullcontext():
                        step(index)
                    run.seen += len(index)
                    if on_progress is not None and (run.step == steps or time.monotonic() >= next_report):
                        on_progress(report())
                        next_report = time.monotonic() + config.progress_every_s
                    if on_checkpoint is not None and run.step < steps and time.monotonic() >= next_checkpoint:
                        on_checkpoint(snapshot(run.epoch, run.step, epoch_shuffler))
                        next_checkpoint = time.monotonic() + config.checkpoint_every_s
                done = 0
                test_loss, test_accuracy = evaluate(model, test_images, test_labels, mean=mean_t, std=std_t,
                                                    device=device, precision=config.precision,
                                                    batch_size=config.eval_batch_size)
                val_scores = {} if val is None else dict(zip(("val_loss", "val_accuracy"), evaluate(
                    model, *val, mean=mean_t, std=std_t, device=device, precision=config.precision,
                    batch_size=config.eval_batch_size), strict=True))
                record = {"epoch": run.epoch, "train_loss": run.loss_sum.item() / run.seen,
                          "train_accuracy": run.correct.item() / run.seen, **val_scores, "test_loss": test_loss,
                          "test_accuracy": test_accuracy}
                run.history.append(record)
                if stopping is not None and stopping.judge(record) and stopping.config.restore_best:
                    stopping.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                if judge is not None and not (stopping and stopping.stop):
                    halted = judge(record)
                if on_progress is not None:
                    on_progress({**report(), "epoch_done": record})
                if on_weights is not None:  # last: the run's final epoch, also one early stopping ends it at
                    on_weights(run.epoch, model, record,
                               run.epoch == config.epochs or bool(stopping and stopping.stop) or bool(halted))
                if on_checkpoint is not None and run.epoch < config.epochs:  # the next epoch, not yet begun
                    on_checkpoint(snapshot(run.epoch + 1, 0, run.shuffler.get_state()))
                    next_checkpoint = time.monotonic() + config.checkpoint_every_s
            if stopping is not None and stopping.config.restore_best:
                model.load_state_dict(stopping.best_weights)
    finally:
        model.to("cpu", memory_format=torch.contiguous_format)
    final = run.history[stopping.best_epoch - 1] if stopping and stopping.config.restore_best else run.history[-1]
    metrics = {key: value for key, value in final.items() if key != "epoch"}
    return {"metrics": metrics, "history": run.history, "reproducible": not nondeterministic,
            "nondeterministic": sorted(nondeterministic), "stopped_early": stopped_early}
