"""Which model a trial runs: a Keras application by name, a ``.keras`` file, or a SavedModel folder.

The controller never imports the framework, so it checks here only what it can without it: that the name is
known or the path is a readable ``.keras`` archive (a zip holding ``config.json``) or a SavedModel folder
(holding ``saved_model.pb``), and it hashes the file (or the folder's files) so that two models never share a
study. The worker loads the model (``keras.saving.load_model`` with ``safe_mode``: a ``.keras`` file cannot
run code it carries in a Lambda layer) and reads its input signature; a model whose input size it cannot
infer fails before any trial with a line asking for ``--input-shape``.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tuner.errors import UsageError

# The reference benchmark's family (tf_cnn_benchmarks' models), built by Keras without weights: nothing is
# downloaded. Values: the keras.applications class; the worker holds the same table (it imports no tuner).
APPLICATIONS = {
    "resnet50": "ResNet50",
    "resnet101": "ResNet101",
    "resnet152": "ResNet152",
    "inception_v3": "InceptionV3",
    "vgg16": "VGG16",
    "mobilenet_v2": "MobileNetV2",
    "densenet121": "DenseNet121",
    "efficientnet_b0": "EfficientNetB0",
}
MODELS = (*APPLICATIONS, "tiny")  # tiny: a few conv layers on 32x32 inputs, for fast tests only
KINDS = ("app", "keras", "savedmodel")
KNOWN = f"{', '.join(MODELS)}, a .keras file or a SavedModel folder"
HASH_CHARS = 8
MAX_DIMS = 8
MAX_DIM = 65536
MAX_FILES = 10000  # a SavedModel folder with more files than this is not a model folder


@dataclass(frozen=True)
class ModelRef:
    """A model as the controller knows it: ``name`` is what studies and records are named by (an application
    name, or a model file's stem and content hash, ``my_model-1a2b3c4d``); ``path`` the resolved file or
    folder of a model file; ``input_shape`` an override of the per-sample input shape (no batch dimension)."""

    name: str = "resnet50"
    kind: str = "app"
    path: str | None = None
    input_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"unknown model kind {self.kind!r}")
        if (self.kind == "app") != (self.path is None):
            raise UsageError(f"model {self.name!r}: a file model needs a path, an application none")
        if self.kind == "app" and self.name not in MODELS:
            raise UsageError(f"unknown model {self.name!r}; known: {KNOWN}")

    @property
    def label(self) -> str:
        """How studies and records name it: ``name``, with the input shape when it was overridden."""
        shape = "" if self.input_shape is None else "@" + "x".join(str(d) for d in self.input_shape)
        return f"{self.name}{shape}"

    @property
    def trainable(self) -> bool:
        """Training needs the Keras model; a SavedModel keeps only its serving functions."""
        return self.kind != "savedmodel"

    def worker_fields(self) -> dict[str, object]:
        """What the worker needs to load it (validated values only)."""
        return {
            "model": self.name,
            "model_kind": self.kind,
            "model_path": self.path,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
        }


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """``'224,224,3'`` -> (224, 224, 3): one sample's shape, without the batch dimension."""
    if text is None:
        return None
    if not text.strip():  # given but empty (an unset shell variable): not "the model's own"
        raise UsageError("--input-shape is empty: give one sample's sizes (e.g. 224,224,3) or leave the flag out")
    parts = [part.strip() for part in text.split(",")]
    if not 1 <= len(parts) <= MAX_DIMS or not all(re.fullmatch(r"[1-9][0-9]{0,5}", p) for p in parts):
        raise UsageError(
            f"--input-shape: {text!r} is not a list of 1 to {MAX_DIMS} sizes of at least 1 (e.g. 224,224,3)"
        )
    dims = tuple(int(part) for part in parts)
    if max(dims) > MAX_DIM:
        raise UsageError(f"--input-shape: {text!r}: a size above {MAX_DIM}")
    return dims


def _stem(path: Path) -> str:
    """A file name made safe for a study name: letters, digits, ``_``, ``.`` and ``-``, at most 32 characters."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem if path.is_file() else path.name).strip("._-")
    return (stem or "model")[:32]


def content_hash(path: Path) -> str:
    """A short SHA-256 of the model file, or of a folder's files (relative names and contents, in order)."""
    digest = hashlib.sha256()
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file())
        if len(files) > MAX_FILES:
            raise UsageError(f"--model: {path} holds more than {MAX_FILES} files: not a SavedModel folder")
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:HASH_CHARS]


def _check_keras_file(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as error:
        raise UsageError(f"--model: {path} is not a Keras archive (.keras files are zip files): {error}") from None
    if "config.json" not in names:
        raise UsageError(f"--model: {path} is a zip file without config.json: not a Keras model archive")


def _check_saved_model(path: Path) -> None:
    found = path / "saved_model.pb"
    if not found.is_file() or found.stat().st_size == 0:
        raise UsageError(f"--model: {path} is a folder without a saved_model.pb: not a SavedModel")


def resolve(text: str, input_shape: str | None = None) -> ModelRef:
    """The model named by ``--model``: an application name, a ``.keras`` file or a SavedModel folder; one
    ``UsageError`` line for anything else (unknown name, missing or unreadable path, corrupt archive)."""
    shape = parse_input_shape(input_shape)
    if not text.strip():  # Path("") is the working folder: never taken for a SavedModel
        raise UsageError(f"--model is empty; known: {KNOWN}")
    if text in MODELS:
        return ModelRef(text, "app", None, shape)
    path = Path(text).expanduser()
    looks_like_path = os.sep in text or text.endswith(".keras") or text.startswith(".")
    if not path.exists():
        if looks_like_path:
            raise UsageError(f"--model: {text}: no such file or folder")
        raise UsageError(f"--model: unknown model {text!r}; known: {KNOWN}")
    if not os.access(path, os.R_OK):
        raise UsageError(f"--model: {text}: not readable")
    path = path.resolve()
    if path.is_file():
        if path.suffix != ".keras":
            raise UsageError(f"--model: {text}: a model file must be a .keras archive (or give a SavedModel folder)")
        _check_keras_file(path)
        kind = "keras"
    elif path.is_dir():
        _check_saved_model(path)
        kind = "savedmodel"
    else:
        raise UsageError(f"--model: {text}: neither a file nor a folder")
    return ModelRef(f"{_stem(path)}-{content_hash(path)}", kind, str(path), shape)


LABEL = re.compile(r"[A-Za-z0-9_.-]{1,32}-[0-9a-f]{" + str(HASH_CHARS) + "}")


def name_of(text: str, input_shape: str | None = None) -> str:
    """The name studies of ``--model`` carry, to find their verdicts: resolved like ``resolve``, but a model
    file's label as ``show`` prints it (``my_model-1a2b3c4d``) is taken as it is, so that a verdict can be
    found on a machine that does not hold the file."""
    if LABEL.fullmatch(text) and not Path(text).exists():
        return ModelRef(text, "keras", text, parse_input_shape(input_shape)).label
    return resolve(text, input_shape).label


def as_ref(model: ModelRef | str) -> ModelRef:
    """A job's model given by name (tests, the stock models) or already resolved."""
    return model if isinstance(model, ModelRef) else ModelRef(model)


def source_of(model: ModelRef | str) -> ModelRef | None:
    """What a ``Workload`` keeps as its source: None for an application at its own input shape."""
    ref = as_ref(model)
    return None if ref.kind == "app" and ref.input_shape is None else ref
