"""Run by the python of the SGLang tools venv: parse planned command lines with the real sglang's own parsers.

stdin: JSON ``[argv, ...]``, each a planned ``python -m MODULE ARGS...``. A worker (``sglang.launch_server``) is
parsed by ``ServerArgs.add_cli_args``; any other module runs as ``__main__`` up to its own ``parse_args``, which
parses ARGS and stops it there. stdout: JSON, one entry per argv: ``{"error": str | None, "url": str | None}``
(``url``: for few_shot_gsm8k, the server URL it builds from --host and --port).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import runpy
import sys


class _Parsed(Exception):
    pass


def _parse_module(module: str, args: list[str]) -> argparse.Namespace:
    original = argparse.ArgumentParser.parse_args

    def capture(self, _args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    argparse.ArgumentParser.parse_args = capture
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except _Parsed as parsed:
        return parsed.args[0]
    finally:
        argparse.ArgumentParser.parse_args = original
    raise RuntimeError(f"{module} ran to its end without parsing arguments")


def _parse_worker(args: list[str]) -> argparse.Namespace:
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    return parser.parse_args(args)


def check(argv: list[str]) -> dict:
    module, args = argv[2], argv[3:]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parsed = _parse_worker(args) if module == "sglang.launch_server" else _parse_module(module, args)
    except SystemExit:
        return {"error": stderr.getvalue().strip().splitlines()[-1], "url": None}
    url = None
    if module == "sglang.test.few_shot_gsm8k":
        from sglang.utils import normalize_base_url

        url = normalize_base_url(parsed.host, parsed.port)
    return {"error": None, "url": url}


if __name__ == "__main__":
    json.dump([check(argv) for argv in json.load(sys.stdin)], sys.stdout)
