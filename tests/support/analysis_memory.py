"""Peak resident-memory growth of one analysis of a wide network, measured in a fresh interpreter (Linux /proc);
`growth_of` measures any process's.

`python -m tests.support.analysis_memory SCENARIO IMAGES MAX_BYTES` builds the network and the images, runs the
analysis once on a few images (so that libraries load their kernels and buffers), resets the peak (VmHWM), runs
it on all the images and prints one JSON line: the growth of the peak over the resident size before, in bytes,
and a small part of the answer.
"""

import json
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from app.analysis.maths import cka_matrix, top_images
from app.analysis.minibatch import minibatch_cka

MiB = 1024 * 1024
NORMALIZATION = {"mean": [0.1307], "std": [0.3081]}
SCENARIOS = ("minibatch", "top_images", "cka_matrix")
REPO = Path(__file__).resolve().parents[2]


def wide_cnn() -> nn.Sequential:
    """Two 128-channel convolutions on 28×28 images: 100,352 values per image at each of its four layers."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1),
                         nn.ReLU()).eval()


def limit_cnn() -> nn.Sequential:
    """One layer at the layer limits: 1024 channels of 62×62 (3.9 M values per image; LIMITS allows 4 M)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 1024, 3, padding=16), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


def images(count: int, shape: tuple[int, ...] = (1, 28, 28)) -> torch.Tensor:
    return torch.randint(0, 256, (count, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def analysis(scenario: str, count: int, max_bytes: int):
    """The analysis of `scenario` on `count` images at `max_bytes`, as a function of the number of images used."""
    if scenario == "minibatch":
        net, data = wide_cnn(), images(count)
        return lambda n: minibatch_cka(data[:n], net, normalization=NORMALIZATION, max_bytes=max_bytes)["matrix"]
    if scenario == "top_images":
        net, data = wide_cnn(), images(count)
        return lambda n: top_images(net, data[:n], **NORMALIZATION, layer=3, channel=0, k=5, max_bytes=max_bytes)[0]
    net, x = limit_cnn(), (images(count, (1, 32, 32)).float() / 255 - 0.5) / 0.25
    return lambda n: cka_matrix(net, x[:n], estimator="debiased", max_bytes=max_bytes)["matrix"]


def peak_growth(scenario: str, *, count: int, max_bytes: int, timeout: float = 1200) -> tuple[int, list]:
    """Run `scenario` in a child interpreter; its peak RSS growth in bytes, and its answer."""
    run = subprocess.run([sys.executable, "-m", "tests.support.analysis_memory", scenario, str(count), str(max_bytes)],
                         cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if run.returncode != 0:
        raise RuntimeError(f"the {scenario} child failed: {run.stderr[-3000:]}")
    found = json.loads(run.stdout.strip().splitlines()[-1])
    return found["growth"], found["answer"]


def growth_of(run, pid: int | str = "self"):
    """`run()`'s answer, and how far process `pid`'s peak resident size rose above its resident size before, in bytes
    (Linux /proc: the peak, VmHWM, is reset first)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status(pid, "VmRSS")
    answer = run()
    return answer, _status(pid, "VmHWM") - before


def _status(pid: int | str, field: str) -> int:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1]) * 1024


def _main(scenario: str, count: str, max_bytes: str) -> None:
    run = analysis(scenario, int(count), int(max_bytes))
    run(8)  # a warm-up on a few images: kernels, thread pools and allocator arenas are not the analysis
    answer, growth = growth_of(lambda: run(int(count)))
    print(json.dumps({"growth": growth, "answer": answer}))


if __name__ == "__main__":
    _main(*sys.argv[1:])
