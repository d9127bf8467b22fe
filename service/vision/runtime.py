"""onnxruntime session creation, in one place so every model gets the same threading policy.

Sessions are expensive to create (graph optimisation, memory planning), so the pipeline creates
one per model per process and reuses it; onnxruntime's `run` is thread-safe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


def create_session(path: Path, threads: int) -> ort.InferenceSession:
    """Open an ONNX model on the CPU with `threads` intra-op threads and no inter-op pool.

    Inter-op parallelism is off because these graphs are chains of convolutions; a second pool
    would only compete with concurrent requests for the same cores. Spinning is off too.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Idle worker threads would otherwise spin for a while after each run, stealing the cores
    # from the next model in the pipeline (several sessions share two cores here).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_single_input(session: ort.InferenceSession, batch: np.ndarray) -> list[np.ndarray]:
    """Run a one-input model on a float32 batch and return its outputs in graph order."""
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})
