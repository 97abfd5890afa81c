"""What a trial runs: a model, train or infer, a batch size and the objective, on synthetic data."""

from __future__ import annotations

from dataclasses import dataclass

from tuner import objective as objectives
from tuner.errors import UsageError
from tuner.models import MODELS, ModelRef, as_ref, source_of

MODES = ("train", "infer")
MAX_BATCH = 4096


@dataclass(frozen=True)
class Workload:
    model: str = "resnet50"
    mode: str = "infer"
    batch_size: int = 32
    objective: str = "throughput"
    source: ModelRef | None = None  # a model file, or an application at another input shape; None: ``model``

    def __post_init__(self) -> None:
        if self.source is None and self.model not in MODELS:
            raise UsageError(f"unknown model {self.model!r}; known: {', '.join(MODELS)}")
        if self.source is not None and self.source.label != self.model:
            raise UsageError(f"model {self.model!r} does not match its source {self.source.label!r}")
        objectives.get(self.objective)
        if self.mode == "train" and not self.ref.trainable:
            raise UsageError(
                f"model {self.model}: training needs a Keras model (.keras file or application); "
                "a SavedModel keeps only its serving function: use --mode infer"
            )
        if self.mode not in MODES:
            raise UsageError(f"unknown mode {self.mode!r}; known: {', '.join(MODES)}")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise UsageError(f"batch size must be from 1 to {MAX_BATCH}, got {self.batch_size}")

    @property
    def ref(self) -> ModelRef:
        return self.source or ModelRef(self.model)

    @property
    def goal(self) -> objectives.Objective:
        return objectives.get(self.objective)


def workload_for(model: ModelRef | str, mode: str, batch_size: int, objective: str = "throughput") -> Workload:
    """The workload of one study of a job: the job's model (by name or resolved), mode, batch and objective."""
    return Workload(as_ref(model).label, mode, batch_size, objective, source_of(model))


def parse_modes(text: str | None) -> list[str]:
    """``'train,infer'``, ``'both'`` or None (both) -> a list of modes."""
    if text is None or text == "both":
        return list(MODES)
    modes = [m.strip() for m in text.split(",")]
    for mode in modes:
        if mode not in MODES:
            raise UsageError(f"--mode: unknown mode {mode!r}; expected train, infer or both")
    return list(dict.fromkeys(modes))


def parse_batches(text: str | None, objective: str = "throughput") -> tuple[int, ...]:
    """``--search-batch 1,8,32,64`` -> (1, 8, 32, 64); None -> () (the batch is not searched). Throughput only:
    a latency objective's batch is the request's, set with --batch-size."""
    if text is None:
        return ()
    batches = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or not 1 <= int(item) <= MAX_BATCH:
            raise UsageError(f"--search-batch: {item!r} is not a batch size from 1 to {MAX_BATCH} (e.g. 1,8,32,64)")
        batches.append(int(item))
    if len(set(batches)) < 2:
        raise UsageError("--search-batch: name at least two batch sizes (e.g. 8,32,64)")
    check_batch_search(objective)
    return tuple(sorted(set(batches)))


def check_batch_search(objective: str) -> None:
    """The batch is searched for throughput only: a latency objective's batch is the request's."""
    if objectives.get(objective).latency:
        raise UsageError(f"--search-batch searches throughput per sample; --objective {objective} keeps the "
                         "request's batch (set it with --batch-size)")  # fmt: skip
