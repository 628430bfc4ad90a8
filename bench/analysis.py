"""Analysis benchmarks: the layer × layer CKA matrix of the default CNN, top images over a full test split, minibatch
CKA over it against a forward pass and against the pytorch-cka package, and the memory one analysis takes."""

from __future__ import annotations

import copy
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import models
from app.analysis.maths import cka_matrix, top_images
from app.analysis.minibatch import minibatch_cka
from app.registry import publishing
from tests.support.analysis_memory import MiB, peak_growth

CKA_SAMPLES = 100  # the default CKA set: 10 test images per class of a 10-class dataset
CKA_RUNS = 15
TEST_SPLIT = 10_000  # MNIST's test split
TOP_RUNS = 3
NORMALIZATION = {"mean": [0.1307], "std": [0.3081]}
BATCH = 256  # minibatch CKA's default batch
MAX_BYTES = 1024**3  # SCV_ANALYSIS_MAX_BYTES' default
RSS_BUDGET, RSS_IMAGES = 64 * MiB, 10_000
# The comparison only: installed on demand into a directory of its own (not the project's dependencies), with the
# plotting libraries its package imports; without them, or offline, the figure is skipped.
PYTORCH_CKA = ["pytorch-cka==1.1.3", "matplotlib", "contourpy", "cycler", "fonttools", "kiwisolver"]
PYTORCH_CKA_DIR = Path(tempfile.gettempdir()) / "scv-bench-pytorch-cka-1.1.3"


def measure(ctx) -> dict[str, float]:
    """cka_matrix_ms (median, target <= 200), its min and debiased median, top_images_10k_ms (median), and the
    test-split figures of `_test_split`; `analysis_rss_growth_mb` (target <= 364) is the peak RSS growth of a
    minibatch CKA of a two-layer 128-channel network on 10,000 images at a 64 MiB budget, in a fresh process.

    `cka_matrix_one_core_cpu_ms` is the same matrix on one torch thread, timed by that thread's CPU
    clock, so other processes on a shared machine barely move it; `load_1m` is the load average as
    the figures were taken. A wall-clock median above target with these low means contention.
    """
    net = _default_cnn(ctx)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (TEST_SPLIT, 1, 28, 28), dtype=torch.uint8, generator=generator)
    x = models.normalize(images[:CKA_SAMPLES], NORMALIZATION["mean"], NORMALIZATION["std"])
    linear = _times(lambda: cka_matrix(net, x, estimator="linear"), CKA_RUNS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # CPU time of one thread doing all the work: what contention from other processes cannot inflate
        one_core = _times(lambda: cka_matrix(net, x, estimator="linear"), CKA_RUNS, clock=time.thread_time)
    finally:
        torch.set_num_threads(threads)
    debiased = _times(lambda: cka_matrix(net, x, estimator="debiased"), CKA_RUNS)
    top = _times(lambda: top_images(net, images, **NORMALIZATION, layer=6, channel=0, k=9), TOP_RUNS)
    return {
        **_test_split(net, images),
        "analysis_rss_growth_mb": peak_growth("minibatch", count=RSS_IMAGES, max_bytes=RSS_BUDGET)[0] / MiB,
        "cka_matrix_ms": statistics.median(linear),
        "cka_matrix_min_ms": min(linear),
        "cka_matrix_one_core_cpu_ms": statistics.median(one_core),
        "cka_matrix_debiased_ms": statistics.median(debiased),
        "top_images_10k_ms": statistics.median(top),
        "load_1m": os.getloadavg()[0],
    }


def _test_split(net: torch.nn.Sequential, images: torch.Tensor) -> dict[str, float]:
    """`cka_test_split_vs_forward` (target <= 3): minibatch CKA of the whole split over one eval forward pass of
    it in the same batches; `cka_vs_pytorch_cka` (target >= 1): pytorch-cka's time for the same matrix over ours;
    `pytorch_cka_float32_gap`: how far its float32 answer is from ours (and from its own float64 one).

    Every time is the CPU time of one torch thread doing all the work (the minimum of the runs after a warm-up),
    so that other processes on a shared machine do not decide a ratio of runs a minute apart.
    """
    batches = [models.normalize(batch, NORMALIZATION["mean"], NORMALIZATION["std"]) for batch in images.split(BATCH)]

    def forward() -> None:
        with torch.no_grad():
            for batch in images.split(BATCH):  # normalised inside, as minibatch CKA does
                net(models.normalize(batch, NORMALIZATION["mean"], NORMALIZATION["std"]))

    answers, theirs, cka = [], [], _pytorch_cka()

    def ours() -> None:
        answers.append(minibatch_cka(images, net, normalization=NORMALIZATION, batch_size=BATCH, max_bytes=MAX_BYTES))

    def pytorch_cka() -> None:
        # A list of loaders: one loader, here the list of batches.
        theirs.append(cka.compute_cka(net, net, [batches], device="cpu", progress=False)[0])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        forward_ms = min(_times(forward, 2, clock=time.thread_time))
        ours_ms = min(_times(ours, 2, clock=time.thread_time))
        theirs_ms = min(_times(pytorch_cka, 1, clock=time.thread_time)) if cka is not None else None
    finally:
        torch.set_num_threads(threads)
    figures = {"cka_test_split_vs_forward": ours_ms / forward_ms}
    if theirs_ms is None:
        return figures
    # The same estimator once pytorch-cka's clamp to [0, 1] is put on ours (it sums each batch's unbiased HSIC
    # where we average: the ratio is the same). Its float32 Grams, neither shifted nor reduced in float64, lose
    # ~1e-2 to cancellation, so the agreement is checked on a float64 copy of the network and the batches; the
    # timed run is its float32 default, the faster for it.
    mine = torch.tensor(answers[-1]["matrix"], dtype=torch.float64).clamp(0.0, 1.0)
    net64 = copy.deepcopy(net).double()
    exact = cka.compute_cka(net64, net64, [[batch.double() for batch in batches]], device="cpu", progress=False)[0]
    gap = (exact - mine).abs().max().item()
    assert gap <= 1e-5, f"pytorch-cka (float64) and minibatch_cka differ by {gap:.2e}"
    figures["pytorch_cka_float32_gap"] = (theirs[-1].double() - mine).abs().max().item()
    figures["cka_vs_pytorch_cka"] = theirs_ms / ours_ms
    return figures


def _pytorch_cka():
    """The pytorch-cka package (module `cka`), installed on demand beside the bench; None, with a message, if it
    cannot be."""
    if str(PYTORCH_CKA_DIR) not in sys.path:
        sys.path.insert(0, str(PYTORCH_CKA_DIR))
    try:
        return importlib.import_module("cka")
    except ImportError:
        pass
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                              str(PYTORCH_CKA_DIR), *PYTORCH_CKA], capture_output=True, text=True)
    importlib.invalidate_caches()
    try:
        return importlib.import_module("cka")
    except ImportError:
        print(f"# analysis: pytorch-cka could not be installed, cka_vs_pytorch_cka skipped: {install.stderr[-500:]}",
              file=sys.stderr)
        return None


def _default_cnn(ctx) -> torch.nn.Sequential:
    """The default CNN for 1×28×28 inputs, saved as a model file in S3 and loaded back as the API would."""
    layers = models.resolve_layers(None, input_shape=(1, 28, 28), num_classes=10)
    blob = models.save_model(models.seeded_model(layers, seed=0), layers=layers, input_shape=[1, 28, 28],
                             classes=[str(i) for i in range(10)], normalization=NORMALIZATION, dataset="mnist",
                             version="bench-analysis")
    bucket = ctx.settings.minio_model_bucket
    publishing.store_objects(ctx.store, bucket=bucket, blob=blob, metadata=publishing.describe(
        blob, version="bench-analysis", dataset="mnist", layers=layers))
    return models.load_model(ctx.store.get_bytes(bucket=bucket, key="bench-analysis/model.safetensors"))


def _times(run, count: int, clock=time.perf_counter) -> list[float]:
    """Milliseconds on `clock` of `count` runs after one warm-up run."""
    run()
    times = []
    for _ in range(count):
        start = clock()
        run()
        times.append((clock() - start) * 1000)
    return times
