"""The towers' compute precision: float32, or bfloat16 (Keras' ``mixed_bfloat16`` policy) where the
hardware multiplies bfloat16 matrices natively.

Matmuls are most of a training step, and a CPU with AVX512-BF16 or AMX-BF16 (or a GPU of compute
capability 8.0 or more) multiplies bfloat16 at about twice its float32 rate. Without those
instructions TensorFlow emulates bfloat16, slower than float32, so ``auto`` never chooses it there.
Only the towers' hidden layers, the hidden layers of their gates and of EPNet, and MMoE's experts
compute in bfloat16: the variables, the optimizer state, the embedding lookups, the numeric
inputs, the gates' output layers (see ``GateNNs``), the final logit and the loss stay float32, and
the export is float32 unless ``train.export_precision`` says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FLOAT32, BFLOAT16 = "float32", "mixed_bfloat16"
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Precision:
    """The chosen Keras dtype policy name for the towers, and why (logged and in ``metrics.json``)."""

    policy: str
    reason: str


def choose(setting: str, cpu_flags: set[str] | None = None, gpu_capability: tuple[int, int] | None = None) -> Precision:
    """``train.precision`` resolved: ``auto`` picks bfloat16 only on native bfloat16 hardware.

    ``cpu_flags`` and ``gpu_capability`` default to this machine's (the first GPU's, if any).
    """
    if setting != "auto":
        return Precision(setting, "train.precision")
    if gpu_capability is None:
        gpu_capability = first_gpu_capability()
    if gpu_capability is not None:
        native = gpu_capability >= (8, 0)
        return Precision(
            BFLOAT16 if native else FLOAT32,
            f"auto: GPU compute capability {gpu_capability[0]}.{gpu_capability[1]} "
            f"{'has' if native else 'lacks'} native bfloat16 (8.0+)",
        )
    flags = cpu_flags if cpu_flags is not None else linux_cpu_flags()
    native = sorted(set(CPU_BF16_FLAGS) & flags)
    if native:
        return Precision(BFLOAT16, f"auto: the CPU has {' and '.join(native)}")
    return Precision(FLOAT32, f"auto: the CPU has neither {' nor '.join(CPU_BF16_FLAGS)} (bfloat16 would be emulated)")


def linux_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU feature flags Linux reports (empty elsewhere: then ``auto`` stays float32)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def first_gpu_capability() -> tuple[int, int] | None:
    """The first visible GPU's compute capability, or ``None`` without a GPU."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    return tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))
