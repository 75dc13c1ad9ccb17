"""The reference peer: NVIDIA PyTriton (Triton's HTTP front end and dynamic batcher) around ONNX Runtime.

Run with the PyTriton venv's Python (see `bench/setup_pytriton.sh`), never the project's:

    bench/.pytriton-venv/bin/python bench/triton_peer.py REPO --port 58100

Serves every model of the bench repository written by `bench/nets.py` (REPO/<name>/1/model.onnx and
its config.yaml's max_batch_size) under its own name, with the same ONNX Runtime session options as
deepserve's config (2 intra-op threads, 1 inter-op thread, no spinning, all graph optimisations), one model
instance, PyTriton's `@batch` decorator and Triton's `DynamicBatcher` with the same 2 ms queue delay.
Prints "ready" on stdout once Triton answers, then serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

_NUMPY = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def make_infer(session: ort.InferenceSession) -> Any:
    names = [o.name for o in session.get_outputs()]

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, inputs), strict=True))

    return infer


def tensors(args: list[Any]) -> list[Tensor]:
    """Triton tensor specs without the batch axis; symbolic dims are -1."""
    return [Tensor(name=a.name, dtype=_NUMPY[a.type],
                   shape=tuple(d if isinstance(d, int) else -1 for d in a.shape[1:])) for a in args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repo", type=Path)
    parser.add_argument("--port", type=int, default=58100,
                        help="HTTP port; gRPC and metrics use the next two")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--spinning", action="store_true",
                        help="let ORT's intra-op threads spin (ORT's default)")
    parser.add_argument("--delay-us", type=int, default=2000,
                        help="DynamicBatcher max_queue_delay_microseconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = TritonConfig(http_address="127.0.0.1", http_port=args.port, grpc_address="127.0.0.1",
                          grpc_port=args.port + 1, metrics_port=args.port + 2, log_verbose=0)
    with Triton(config=config) as triton:
        for folder in sorted(p for p in args.repo.iterdir() if (p / "1" / "model.onnx").exists()):
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
            if not args.spinning:  # deepserve's default (config intra_op_spinning: false)
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(folder / "1" / "model.onnx"), sess_options=options,
                                           providers=["CPUExecutionProvider"])
            match = re.search(r"max_batch_size:\s*(\d+)", (folder / "config.yaml").read_text())
            max_batch = int(match.group(1)) if match else 16
            triton.bind(
                model_name=folder.name, infer_func=make_infer(session),
                inputs=tensors(session.get_inputs()), outputs=tensors(session.get_outputs()),
                config=ModelConfig(max_batch_size=max_batch,
                                   batcher=DynamicBatcher(max_queue_delay_microseconds=args.delay_us)),
                strict=False,
            )
        triton.run()  # non-blocking: Triton is up when this returns
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        triton.serve()


if __name__ == "__main__":
    main()
