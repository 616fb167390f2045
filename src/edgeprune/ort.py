"""ONNX Runtime sessions as edgeprune times and serves them. Imports no torch: a server that only runs ONNX
models (edgeprune serve) stays as small as the runtime itself."""

from __future__ import annotations

from pathlib import Path


def ort_session(onnx_bytes_or_path: bytes | str | Path, threads: int = 1, spin: bool = True):
    """A CPU InferenceSession with `threads` intra-op threads, run sequentially (the edge setting). spin=False stops
    idle worker threads from spinning, for sessions run one after another (a chain of blocks): a spinning worker
    takes the cores of the next session."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    src = str(onnx_bytes_or_path) if isinstance(onnx_bytes_or_path, Path) else onnx_bytes_or_path
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidProtobuf, NoSuchFile

    try:
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    except (InvalidProtobuf, NoSuchFile) as e:
        from .errors import CheckpointError

        what = "the ONNX model given" if isinstance(src, bytes) else repr(src)
        reason = "does not exist" if isinstance(e, NoSuchFile) else "is truncated or not ONNX"
        raise CheckpointError(f"cannot load {what}: it {reason}; write it again (export the run, or rerun the "
                              "command that made it)") from None
