"""``bitdance-rt gradio``: registered with the other commands, and its argument errors reported before any model
is loaded (one line on stderr, exit status 2)."""

from __future__ import annotations

import pytest

from bitdance_rt.cli import COMMANDS, build_parser, main


def test_gradio_is_a_command():
    assert "gradio" in COMMANDS
    args = build_parser().parse_args(["gradio", "--tiny", "--port", "7861", "--concurrency", "3"])
    assert args.command == "gradio" and args.tiny and args.port == 7861 and args.concurrency == 3


@pytest.mark.parametrize("argv, message", [
    (["gradio"], "give a model path, or --tiny"),
    (["gradio", "--tiny", "--concurrency", "0"], "--concurrency must be an integer >= 1"),
    (["gradio", "--tiny", "--default-size", "big"], "--default-size 'big' is not WIDTHxHEIGHT"),
])
def test_argument_errors(argv, message, capsys):
    pytest.importorskip("gradio", reason="the gradio extra is not installed (pip install -e '.[test]')")
    assert main(argv) == 2
    assert message in capsys.readouterr().err
