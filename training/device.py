"""Where and how a model runs: device choice, autocast, memory layout, CPU threads, OOM back-off.

The same code path serves CPU and CUDA; everything CUDA-specific is a branch of a few lines here,
so the CPU tests exercise the logic around it:

* ``device="auto"`` picks CUDA when present, else the CPU;
* precision ``"auto"``: on CUDA bf16 autocast when the GPU supports it (fp16 otherwise) and
  ``cudnn.benchmark`` (fixed tile shapes make it pay); on the CPU float32, no autocast. Training
  may ask for ``"bfloat16"`` on the CPU too: CPUs with native bf16 instructions (AVX512-BF16,
  AMX) run the U-Net's convolutions about twice as fast (``run.precision``); inference on the
  CPU stays float32, so tiles stay exact;
* ``channels_last`` memory format everywhere (faster convolutions on both);
* :func:`run_batched` runs a function over a batch in chunks and halves the chunk on
  out-of-memory errors, keeping the smaller size for the following batches.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import torch
from torch import nn

from training.errors import OptionError

#: Phrases of the errors PyTorch raises when an allocation fails (CUDA and the CPU allocator).
OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU; anything else is passed to :class:`torch.device`."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"device {device!r} requested but CUDA is not available here")
    return resolved


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move ``model`` to ``device`` in eval mode and channels_last layout; on CUDA enable cudnn
    benchmarking (tiles have one shape, so the chosen kernels are reused)."""
    model = model.to(device=device, memory_format=torch.channels_last).eval()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return model


#: Names of ``precision`` settings and the autocast dtype each asks for (None: float32, no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {
    "auto": None,  # resolved per device by autocast_dtype
    "float32": None,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain float32).

    ``"auto"``: bf16 on CUDA when the GPU supports it, else fp16; float32 on the CPU.
    ``"float16"`` needs CUDA (the CPU has no fast fp16 convolutions).
    """
    if precision not in PRECISIONS:
        raise OptionError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "float16" and device.type != "cuda":
        raise OptionError("precision 'float16' needs a CUDA device; on the CPU use 'bfloat16' or 'float32'")
    return PRECISIONS[precision]


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """Autocast for :func:`autocast_dtype`; a no-op for float32 (the CPU's default: exact tiles)."""
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def set_cpu_threads(threads: int | None = None) -> int:
    """Set PyTorch's intra-op threads to ``threads`` (default: the cores this process may use).

    Returns the number set. Call once per process; serving workers pass their share of the cores.
    """
    count = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, count))
    return torch.get_num_threads()


def is_out_of_memory(error: BaseException) -> bool:
    """True for PyTorch's CUDA and CPU allocation failures."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in OOM_MESSAGES)


class BatchRunner:
    """Run ``function`` over the first axis of a batch in chunks of at most ``size`` items.

    On an out-of-memory error the chunk size is halved (down to 1, then the error propagates) and
    the remaining items are retried; the reduced size is kept for later calls.
    """

    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor], size: int) -> None:
        if size < 1:
            raise OptionError(f"batch size must be >= 1, not {size}")
        self.function = function
        self.size = size

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        outputs: list[torch.Tensor] = []
        start = 0
        while start < batch.shape[0]:
            try:
                outputs.append(self.function(batch[start : start + self.size]))
            except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
                if not is_out_of_memory(error) or self.size == 1:
                    raise
                self.size //= 2
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            start += outputs[-1].shape[0]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)
