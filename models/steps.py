"""One training step (gather, normalise, forward, loss, backward, optimizer step, running sums), and on CUDA the
same step captured once as a graph and replayed: a small CNN's step is ~100 kernels of a few microseconds, so
on a big GPU launching them costs more than running them."""

from __future__ import annotations

from collections.abc import Callable

import torch

Step = Callable[[torch.Tensor], None]  # trains on the samples at these positions of the (device-resident) split


class GraphedStep:
    """Runs `step` eagerly for its first WARMUP full batches (they are real steps, on a side stream as CUDA graph
    capture asks), then captures it once for a batch of `size` and replays that graph for every later full batch;
    a smaller batch (an epoch's last) runs eagerly. The graph runs the very kernels the eager step runs, with the
    same random-number offsets, so a run's weights do not depend on where its graph was captured (a resumed run
    captures at a different step): tests/test_reproducibility.py checks that on a GPU."""

    WARMUP = 3

    def __init__(self, step: Step, *, size: int, zero_grad: Callable[[], None], device: torch.device):
        self.step, self.zero_grad, self.device = step, zero_grad, device
        self.index = torch.zeros(size, dtype=torch.int64, device=device)  # the graph's input: read at each replay
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm = 0

    def __call__(self, index: torch.Tensor) -> None:
        if len(index) != len(self.index):
            self.zero_grad()
            self.step(index)
        elif self.graph is not None:
            self.index.copy_(index)
            self.graph.replay()
        elif self.warm < self.WARMUP:
            self.warm += 1
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.zero_grad()
                self.step(index)
            torch.cuda.current_stream(self.device).wait_stream(side)
        else:
            self.index.copy_(index)
            self.zero_grad()  # the graph's backward then writes its gradients into memory of its own pool
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.step(self.index)
            self.graph.replay()  # capturing ran nothing: this is the step's one run
