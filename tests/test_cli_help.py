"""Every command's --help exits 0 and explains every option it lists.

The commands run in-process (their main functions, as `python -m ...` calls them), so the whole file costs one
interpreter start-up; one subprocess call per entry point checks the real `python -m` route. An option whose help
is empty, or only what argparse/jsonargparse add by themselves ("(type: int, default: 3)"), is a failure: give it a
help string, or, for LightningCLI, an entry in the Args section of the class docstring.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_GENERATED = re.compile(r"^(type:|required|default:)")  # what argparse / jsonargparse write without any help text


def _strip_generated(text: str) -> str:
    """`text` without the trailing "(type: ..., default: ...)" groups (nested brackets included)."""
    text = text.strip()
    while text.endswith(")"):
        depth = 0
        for i in range(len(text) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(text[i], 0)
            if depth == 0:
                break
        inner = text[i + 1 : -1].strip()
        if depth or not _GENERATED.match(inner):
            break
        text = text[:i].strip()
    return text


def help_entries(text: str) -> list[tuple[str, str]]:
    """(invocation, help text) of every option and positional argument an argparse/jsonargparse help lists."""
    entries: list[list] = []
    current: list | None = None
    section, in_usage = "", False
    for line in text.splitlines():
        if line.startswith("usage:"):
            in_usage = True
        if in_usage:
            in_usage = bool(line.strip())
            continue
        if not line.strip():
            current = None
            continue
        indent = len(line) - len(line.lstrip())
        body = line.strip()
        if indent == 0:
            section, current = body, None
        elif indent <= 4 and (body.startswith("-") or section.startswith("positional arguments")):
            invocation, _, rest = (re.split(r"(\s{2,})", body, maxsplit=1) + ["", ""])[:3]
            current = [invocation, rest.strip(), indent]
            entries.append(current)
        elif current is not None and indent > current[2]:
            current[1] = f"{current[1]} {body}".strip()
    return [(invocation, help_) for invocation, help_, _ in entries]


def options_without_help(text: str, only: set[str] | None = None) -> list[str]:
    """Invocations in `text` whose help says nothing; `only`: check just the options of these names."""
    missing = []
    for invocation, help_ in help_entries(text):
        name = invocation.split()[0].rstrip(",").rsplit(".", 1)[-1].lstrip("-")
        if only is not None and name not in only:
            continue
        if not _strip_generated(help_):
            missing.append(invocation)
    return missing


def test_the_help_parser_finds_options_without_help() -> None:
    p = argparse.ArgumentParser(prog="demo", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("image", help="an image file")
    p.add_argument("labels")
    p.add_argument("--a-rather-long-option-name", type=int, default=3, help="explained on the next line")
    p.add_argument("--bare", type=int, default=3)
    p.add_argument("-q", "--quiet", action="store_true")
    text = p.format_help()
    assert {name for name, _ in help_entries(text)} >= {
        "image",
        "labels",
        "--a-rather-long-option-name A_RATHER_LONG_OPTION_NAME",
    }
    assert options_without_help(text) == ["labels", "--bare BARE", "-q, --quiet"]
    assert _strip_generated("Peak rate. (type: tuple[float, float], default: (0.9, 0.999))") == "Peak rate."
    assert _strip_generated("(type: Optional[Foo], default: null, known subclasses: a.B, c.D)") == ""
    assert _strip_generated("Ratio (0 disables).") == "Ratio (0 disables)."


# ---------------------------------------------------------------------------------------------- the commands


def _vit(argv):
    from vit.__main__ import main

    return main(argv)


def _dalle(argv):
    from dalle.__main__ import main

    return main(argv)


def _seq2seq(argv):
    from core_attention.examples.seq2seq import main

    return main(argv)


def _dalle_commands() -> list[str]:
    from dalle.__main__ import COMMANDS

    return list(COMMANDS)


def _strategy_own_options() -> set[str]:
    from core_attention.training import TransformerFSDPStrategy

    return set(inspect.signature(TransformerFSDPStrategy.__init__).parameters) - {"self", "kwargs"}


CASES = [
    ("python -m vit", _vit, ["--help"], None),
    *[
        (f"python -m vit {c}", _vit, [c, "--help"], None)
        for c in ("fit", "validate", "test", "predict", "attention", "zero-shot")
    ],
    ("python -m dalle", _dalle, ["--help"], None),
    *[(f"python -m dalle {c}", _dalle, [c, "--help"], None) for c in _dalle_commands()],
    ("python -m core_attention.examples.seq2seq fit", _seq2seq, ["fit", "--help"], None),
    # The project's classes that a command takes by class path: their options show in their own help.
    *[
        (f"python -m vit fit --data.help {c}", _vit, ["fit", "--data.help", c], None)
        for c in ("vit.data.DigitsDataModule", "vit.data.ImageFolderDataModule", "vit.data.CIFARDataModule")
    ],
    *[
        (f"python -m dalle fit --data.help {c}", _dalle, ["fit", "--data.help", c], None)
        for c in (
            "dalle.data.datamodules.ShapesDataModule",
            "dalle.data.datamodules.CaptionFolderDataModule",
            "dalle.data.datamodules.WebDatasetDataModule",
        )
    ],
    (
        "python -m dalle fit-vae --data.help dalle.data.image_folder.ImageFolderDataModule",
        _dalle,
        ["fit-vae", "--data.help", "dalle.data.image_folder.ImageFolderDataModule"],
        None,
    ),
    (
        "python -m vit fit --trainer.callbacks.help core_attention.training.CompileBlocks",
        _vit,
        ["fit", "--trainer.callbacks.help", "core_attention.training.CompileBlocks"],
        None,
    ),
    # Only its own options: the ones it passes on to Lightning's FSDPStrategy are documented (or not) by Lightning.
    (
        "python -m vit fit --trainer.strategy.help core_attention.training.TransformerFSDPStrategy",
        _vit,
        ["fit", "--trainer.strategy.help", "core_attention.training.TransformerFSDPStrategy"],
        "strategy",
    ),
]


def run_help(main, argv: list[str], capsys) -> tuple[int, str]:
    try:
        result = main(argv)
        code = result if isinstance(result, int) else 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("command, main, argv, only", CASES, ids=[c[0].removeprefix("python -m ") for c in CASES])
def test_help_explains_every_option(command: str, main, argv: list[str], only: str | None, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "120")  # a fixed width, so the wrapping (and thus the parsing) is the same everywhere
    monkeypatch.setattr(sys, "argv", [command.split(" --")[0]])  # as `python -m ...` leaves it for LightningCLI
    monkeypatch.chdir(ROOT)
    code, text = run_help(main, argv, capsys)
    assert code == 0, f"`{command} {' '.join(argv[-1:])}` exited {code}:\n{text[-3000:]}"
    entries = help_entries(text)
    if command in ("python -m dalle",):
        from dalle.__main__ import COMMANDS

        for name, (_, _, help_) in COMMANDS.items():
            assert help_.strip() and re.search(rf"^  {re.escape(name)}\s+\S", text, re.M), (
                f"command {name} has no help line"
            )
        return
    assert entries, f"no options found in the help of `{command}`:\n{text[:2000]}"
    missing = options_without_help(text, _strategy_own_options() if only == "strategy" else None)
    assert not missing, f"`{command} --help` lists options without any help text: {missing}"


@pytest.mark.parametrize("module", ["dalle", "vit"])
def test_python_m_help_runs(module: str) -> None:
    """The real entry points (`if __name__ == "__main__"`), in a fresh process."""
    env = {**os.environ, "COLUMNS": "120"}
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"usage: python -m {module}")
    if module == "vit":
        assert "{fit,validate,test,predict}" in done.stdout and "attention" in done.stdout
