"""A worker's failure says why in one line, from its own stderr: the last exception, not the traceback."""

from __future__ import annotations

from tuner.errors import Interrupted, WorkerExited, WorkerTimeout, cause
from tuner.replay import NCHW_WITHOUT_ONEDNN


def test_graph_execution_error_gives_the_kernels_own_message() -> None:
    # TensorFlow's exception line is only a heading; the line that says what went wrong comes after it.
    assert cause(NCHW_WITHOUT_ONEDNN) == (
        "UnimplementedError: The Conv2D op currently only supports the NHWC tensor format on the CPU. "
        "The op was given the format: NCHW"
    )


def test_log_lines_after_the_exception_do_not_replace_its_message() -> None:
    tail = NCHW_WITHOUT_ONEDNN + "W0000 00:00:17 1234 thread_pool.cc:99] Ignoring a leaked thread pool\n"
    # A log line printed at exit comes after the exception; the cause is still the kernel's message.
    assert cause(tail).startswith("UnimplementedError: The Conv2D op currently only supports the NHWC")
    # Escape codes and table separators in a worker's stderr never reach a terminal or a table row.
    assert cause("ValueError: bad \x1b[31mred\x1b[0m | column") == "ValueError: bad  [31mred [0m / column"


def test_plain_exception_and_log_lines() -> None:
    tail = 'I0000 some log\nTraceback (most recent call last):\n  File "w.py", line 1\n    import x\n'
    # The exception's own line, without its module path; a traceback's frames and source lines are skipped.
    assert cause(tail + "tensorflow.errors.ModuleNotFoundError: No module named 'tensorflow'\n") == (
        "ModuleNotFoundError: No module named 'tensorflow'"
    )
    # Without any exception, the last meaningful line; nothing at all gives nothing.
    assert cause("starting\nSegmentation fault (core dumped)\n") == "Segmentation fault (core dumped)"
    assert cause("") == ""


def test_long_causes_are_shortened_and_timeouts_are_not_explained_by_log_lines() -> None:
    assert len(cause("ValueError: " + "x" * 1000)) == 240
    # The error's one line carries the cause after its own message.
    assert str(WorkerExited("worker exited with status 1", "ValueError: bad")) == (
        "worker exited with status 1: ValueError: bad"
    )
    # A timeout's reason is the timeout: the last log line would mislead.
    assert str(WorkerTimeout("worker ran past 60 s", "I0000 still tracing")) == "worker ran past 60 s"
    assert str(Interrupted("interrupted", "I0000 still tracing")) == "interrupted"
