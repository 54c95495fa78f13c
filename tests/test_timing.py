"""time_cuda's control flow (L2 flush, rotation, CUDA-graph capture and replay) against a stand-in
for torch.cuda: this machine has no GPU, so the order of calls is what can be checked here."""
import contextlib
import sys
import types

import pytest

from harness import timing


class FakeCuda:
    def __init__(self):
        self.log: list[str] = []
        self.capturing = None
        self.graphs = 0

    def install(self, monkeypatch):
        cuda = types.SimpleNamespace(
            Stream=lambda device=None: types.SimpleNamespace(wait_stream=lambda other: None),
            current_stream=lambda device=None: types.SimpleNamespace(wait_stream=lambda other: None),
            stream=self.stream, synchronize=lambda device=None: None, CUDAGraph=self.CUDAGraph,
            graph=self.graph, Event=self.Event)
        fake = types.SimpleNamespace(cuda=cuda, int32="int32", empty=self.empty)
        monkeypatch.setitem(sys.modules, "torch", fake)
        monkeypatch.setattr(timing, "_flush_buffers", {})

    def empty(self, n, dtype=None, device=None):
        return types.SimpleNamespace(zero_=lambda: self.log.append("flush"))

    @contextlib.contextmanager
    def stream(self, s):
        self.log.append("side-stream")
        yield

    def CUDAGraph(self):
        self.graphs += 1
        graph = types.SimpleNamespace(name=f"g{self.graphs - 1}", captured=[])
        graph.replay = lambda: self.log.append(f"replay {graph.name}:{'+'.join(graph.captured)}")
        return graph

    @contextlib.contextmanager
    def graph(self, g):
        self.capturing = g
        yield
        self.capturing = None

    def Event(self, enable_timing=False):
        return types.SimpleNamespace(record=lambda: None, synchronize=lambda: None, elapsed_time=lambda end: 2.0)

    def launch(self, name):
        def fn():
            if self.capturing is not None:
                self.capturing.captured.append(name)
            else:
                self.log.append(f"launch {name}")
        return fn


@pytest.fixture
def cuda(monkeypatch):
    fake = FakeCuda()
    fake.install(monkeypatch)
    return fake


def test_eager_timing_flushes_before_every_rep_and_rotates(cuda):
    samples, stopped = timing.time_cuda([cuda.launch("a"), cuda.launch("b")], warmup=1, reps=3, device="cuda:0")
    assert samples == [2.0, 2.0, 2.0] and not stopped
    assert cuda.log == ["launch a", "flush", "launch b", "flush", "launch a", "flush", "launch b"]


def test_cuda_graph_captures_each_input_set_once_and_times_replays(cuda):
    samples, _ = timing.time_cuda([cuda.launch("a"), cuda.launch("b")], warmup=0, reps=3, device="cuda:0",
                                  cuda_graph=True)
    assert len(samples) == 3 and cuda.graphs == 2
    # warmed eagerly on a side stream (compilation and first allocation stay out of the capture)
    assert cuda.log[:3] == ["side-stream", "launch a", "launch b"]
    assert cuda.log[3:] == ["flush", "replay g0:a", "flush", "replay g1:b", "flush", "replay g0:a"]


def test_early_stop_on_the_gpu_path(cuda):
    samples, stopped = timing.time_cuda(cuda.launch("a"), warmup=0, reps=5, early_stop_ms=1.0, device="cuda:0")
    assert stopped and samples == [2.0]
