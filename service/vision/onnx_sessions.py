"""onnxruntime session creation, in one place so every model gets the same threading policy.

Sessions are expensive to create (graph optimisation, memory planning), so the pipeline creates
one per model per process and reuses it; onnxruntime's `run` is thread-safe.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def create_session(path: Path) -> ort.InferenceSession:
    """Open an ONNX model on the CPU, single-threaded.

    These networks are small: splitting each convolution across two threads took MobileFaceNet
    1.55x the CPU time for less than 1.2x the speed, and under concurrent requests the extra
    threads only compete for the same cores. A lone call runs its independent model runs side
    by side instead (`parallel.SideBySide`).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
