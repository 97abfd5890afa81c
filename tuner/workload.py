"""What a trial runs: a model, train or infer, and a batch size, on synthetic data."""

from __future__ import annotations

from dataclasses import dataclass

from tuner.errors import UsageError

MODELS = ("resnet50", "tiny")  # tiny: a few conv layers on 32x32 inputs, for fast tests only
MODES = ("train", "infer")


@dataclass(frozen=True)
class Workload:
    model: str = "resnet50"
    mode: str = "infer"
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise UsageError(f"unknown model {self.model!r}; known: {', '.join(MODELS)}")
        if self.mode not in MODES:
            raise UsageError(f"unknown mode {self.mode!r}; known: {', '.join(MODES)}")
        if not 1 <= self.batch_size <= 4096:
            raise UsageError(f"batch size must be from 1 to 4096, got {self.batch_size}")


def parse_modes(text: str | None) -> list[str]:
    """``'train,infer'``, ``'both'`` or None (both) -> a list of modes."""
    if text is None or text == "both":
        return list(MODES)
    modes = [m.strip() for m in text.split(",")]
    for mode in modes:
        if mode not in MODES:
            raise UsageError(f"--mode: unknown mode {mode!r}; expected train, infer or both")
    return list(dict.fromkeys(modes))
