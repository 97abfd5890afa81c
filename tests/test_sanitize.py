"""Stored text as one printable line: nothing in it can drive a terminal or end a comment."""

from __future__ import annotations

from tuner.sanitize import one_line


def test_control_characters_and_escape_codes_become_spaces() -> None:
    text = "AMD\nEPYC\r\x1b[2J\x1b]0;evil title\x07 9654\u2028rm\u202e -rf\x00"
    # Newlines, carriage returns, CSI and OSC escape sequences, NUL, line separators and bidi overrides go.
    assert one_line(text) == "AMD EPYC 9654 rm -rf"


def test_length_is_capped_and_plain_text_kept() -> None:
    # Plain text stays as it is (quotes too: they are harmless in a comment); long text is cut with "...".
    assert one_line("Intel(R) Xeon(R) 'Gold' \"6338\"") == "Intel(R) Xeon(R) 'Gold' \"6338\""
    assert one_line("x" * 500, 20) == "x" * 17 + "..."
    assert one_line(None) == "None"
