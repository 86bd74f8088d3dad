"""An SGLang release's own argument definitions, read from its wheel's source without importing it.

Importing an older sglang needs its own full install (about 6 GB); its ``add_argument`` calls are plain text.
``definitions(source)`` reads every ``*.add_argument(...)`` call with ``ast``: option strings, action, nargs and
literal choices (choices held in a variable accept anything). ``parser(defs)`` rebuilds an argparse parser of
them, which parses a planned command line as that release would (types are not checked).

The wheel is fetched with ``pip download --no-deps``; where that fails (no index), the definitions kept in
``fixtures/sglang-<version>-args.json`` (made by ``python -m selftests.wheel_args VERSION``) stand in.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# the files of a release whose arguments the plan's commands use
SOURCES = {"worker": "sglang/srt/server_args.py", "few_shot_gsm8k": "sglang/test/few_shot_gsm8k.py",
           "bench_serving": "sglang/bench_serving.py"}
_ACTIONS = {"store", "store_true", "store_false", "store_const", "append", "append_const", "count", "extend"}


def definitions(source: str) -> list[dict]:
    """Every ``add_argument`` call of ``source``: options, action, nargs, choices (None: any value)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"):
            continue
        options = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if not options or not options[0].startswith("-"):
            continue
        kw = {k.arg: k.value for k in node.keywords}
        action = kw.get("action")
        if isinstance(action, ast.Constant) and action.value in _ACTIONS:
            action = action.value
        elif isinstance(action, ast.Attribute) and action.attr == "BooleanOptionalAction":
            action = "boolean_optional"
        else:
            action = "store"  # absent, or a custom action class (e.g. a deprecation notice): it takes nargs as given
        nargs = kw.get("nargs")
        nargs = nargs.value if isinstance(nargs, ast.Constant) else ("*" if nargs is not None else None)
        choices = kw.get("choices")
        try:
            choices = [str(c) for c in ast.literal_eval(choices)] if choices is not None else None
        except ValueError:
            choices = None
        out.append({"options": options, "action": action, "nargs": nargs, "choices": choices})
    return out


def parser(defs: list[dict]) -> argparse.ArgumentParser:
    """An argparse parser with exactly these arguments (``exit_on_error`` off: a bad argv raises)."""
    p = argparse.ArgumentParser(add_help=False, exit_on_error=False, allow_abbrev=True)
    for d in defs:
        kwargs: dict = {}
        if d["action"] == "boolean_optional":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif d["action"] in ("store_true", "store_false", "count"):
            kwargs["action"] = d["action"]
        elif d["action"] in ("store_const", "append_const"):
            kwargs.update(action=d["action"], const=None)
        else:
            kwargs["action"] = d["action"] if d["action"] in ("append", "extend") else "store"
            if d["nargs"] is not None:
                kwargs["nargs"] = d["nargs"]
            if d["choices"] is not None:
                kwargs["choices"] = d["choices"]
        try:
            p.add_argument(*d["options"], **kwargs)
        except argparse.ArgumentError:  # the same option defined twice (in different branches of the source)
            continue
    return p


def _from_wheel(version: str) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                               f"sglang=={version}"], capture_output=True, text=True, timeout=300)
        wheels = list(Path(tmp).glob("sglang-*.whl"))
        if done.returncode != 0 or not wheels:
            return None
        with zipfile.ZipFile(wheels[0]) as whl:
            texts = {name: whl.read(path).decode() for name, path in SOURCES.items()}
    defs: dict = {name: definitions(text) for name, text in texts.items()}
    # how few_shot_gsm8k makes its server URL: host and port joined as written, or with the scheme added
    defs["few_shot_gsm8k_url"] = "joined" if 'f"{args.host}:{args.port}"' in texts["few_shot_gsm8k"] else "normalized"
    return defs


def release_definitions(version: str) -> tuple[dict, str]:
    """(definitions by tool plus ``few_shot_gsm8k_url``, where they were read): from the release's wheel, else the
    kept fixture."""
    defs = _from_wheel(version)
    if defs is not None:
        return defs, f"the sglang {version} wheel"
    fixture = FIXTURES / f"sglang-{version}-args.json"
    return json.loads(fixture.read_text()), str(fixture)


if __name__ == "__main__":
    version = sys.argv[1]
    defs = _from_wheel(version)
    if defs is None:
        raise SystemExit(f"pip download sglang=={version} failed")
    FIXTURES.mkdir(exist_ok=True)
    (FIXTURES / f"sglang-{version}-args.json").write_text(json.dumps(defs, indent=1) + "\n")
