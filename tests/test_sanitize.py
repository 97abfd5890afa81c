"""Stored text as one printable line: nothing in it can drive a terminal or end a comment."""

from __future__ import annotations

import pytest

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


def test_printable_keeps_lines_and_spacing_but_no_escape_sequence() -> None:
    from tuner.sanitize import printable

    text = "trial 3   baseline \x1b]0;owned\x07x\x1b[31m\nsecond\u202eline"
    # Log lines keep the tool's own layout (runs of spaces, newlines); escape sequences and controls go.
    assert printable(text) == "trial 3   baseline  x \nsecond line"


def test_a_shell_comment_leaves_nothing_a_shell_could_act_on() -> None:
    from tuner.sanitize import shell_comment

    text = "Intel(R) Xeon; curl x|sh $(id) `id` *(e:'rm -rf ~':) & <a> \"q\" é 1.03x [0.99, 1.05] 95% CI"
    cleaned = shell_comment(text)
    # Pasted into an interactive zsh, where "#" starts no comment, the line must hold no command separator,
    # substitution, redirection, quote, glob or glob qualifier: parentheses become brackets, the rest "_".
    assert not set(";|&$`'\"<>*?!~(){}") & set(cleaned)
    assert cleaned.startswith("Intel[R] Xeon_ curl x_sh _[id] _id_ _[e:_rm -rf __:]")
    # Figures and intervals read as before.
    assert cleaned.endswith("_ 1.03x [0.99, 1.05] 95% CI")


def test_the_clis_log_warning_and_result_lines_carry_no_escape_sequence(capsys: pytest.CaptureFixture[str]) -> None:
    from tuner import cli

    stored = "trial 3 FAILED (exited: \x1b]0;owned\x07\x1b[2Jboom)"
    cli._log(stored)
    cli._warn(stored)
    cli._out(stored)
    out, err = capsys.readouterr()
    # Progress, warnings and benchmark lines quote stored text (another worker's reason, a verdict's name):
    # every one reaches the terminal without the escape sequences that would retitle or clear it.
    assert "\x1b" not in out + err and "\x07" not in out + err
    assert out.count("boom") == 1 and err.count("boom") == 2
