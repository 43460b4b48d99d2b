"""``bitdance-rt`` command line. One module per command (``generate``, ``info``, ``download``, ``demo``, ``serve``,
``sample``, ``gradio``); each defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``, and is
listed in ``COMMANDS``.
Options shared by the commands that load a model live in ``model_options.py``.

Errors of the runtime (bad files, bad arguments, missing devices) print one line to stderr and exit with 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import BitDanceError

# command name -> module (relative to this package); imported only when the command runs or the parser is built
COMMANDS = {
    "generate": ".generate",
    "info": ".info",
    "download": ".download",
    "demo": ".demo",
    "serve": ".serve",
    "sample": ".sample",
    "gradio": ".gradio",
}


def _command(name: str):
    return importlib.import_module(COMMANDS[name], __name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bitdance-rt", description="Run BitDance image generators.")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = _command(name)
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.HELP))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _command(args.command).run(args)
    except BitDanceError as e:
        print(f"bitdance-rt {args.command}: {e}", file=sys.stderr)
        return 2
