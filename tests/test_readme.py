"""README.md works as written: every ```python block runs, every command line names a real subcommand and parses.

The Python blocks run for real (with the shipped models), in a temporary working directory that holds what they
read: the digit image `make demo` writes, a photo, a folder of captioned images. `timm.create_model` is made offline
(pretrained weights become seeded random ones), so the timm block compares logits without a download.

The command lines (```bash blocks, and `python -m ...` in the prose) are parsed, never run: the module and
subcommand must exist, every --config file must exist, and LightningCLI commands must pass `--print_config`, which
checks every option name and value against the real classes.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def readme_blocks(*languages: str) -> list[tuple[int, str]]:
    """(first line number, code) of every fenced block in one of `languages`."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(2)) for m in FENCE.finditer(text) if m.group(1) in languages]


PYTHON_BLOCKS = readme_blocks("python")
SHELL_BLOCKS = readme_blocks("bash", "sh", "shell")


def shell_commands() -> list[tuple[int, list[str]]]:
    """(line number, argv) of every command in the shell blocks (backslash continuations joined, comments dropped)."""
    commands = []
    for start, code in SHELL_BLOCKS:
        pending, first = "", None
        for number, line in enumerate(code.splitlines(), start):
            first = number if not pending else first
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            argv = shlex.split(pending + line, comments=True)
            pending = ""
            if argv:
                commands.append((first, argv))
    return commands


def inline_commands() -> list[tuple[int, list[str]]]:
    """`python -m ...` spans in the prose (outside fenced blocks)."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), README.read_text(encoding="utf-8"))
    return [
        (text.count("\n", 0, m.start()) + 1, shlex.split(m.group(1))) for m in re.finditer(r"`(python -m [^`]+)`", text)
    ]


def module_call(argv: list[str]) -> tuple[str, list[str]] | None:
    """(module, its arguments) of `python -m MODULE ...`, `torchrun ... -m MODULE ...` or `srun python -m ...`."""
    if "-m" not in argv:
        return None
    i = argv.index("-m")
    if not any(Path(a).name.startswith(("python", "torchrun")) for a in argv[:i]):
        return None
    return argv[i + 1], argv[i + 2 :]


# (README line, module, its arguments, whether it is a whole command line from a shell block)
MODULE_CALLS = [
    (line, *call, fenced)
    for commands, fenced in ((shell_commands(), True), (inline_commands(), False))
    for line, argv in commands
    if (call := module_call(argv)) is not None
]


def test_readme_has_what_the_tests_check() -> None:
    text = README.read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", text, re.M)
    for section in (
        "Two commands",
        "Python API",
        "Train on your own data",
        "Reuse the attention core",
        "Train on many GPUs",
        "Benchmarks",
        "Layout",
    ):
        assert section in headings, f"README.md lost its {section!r} section"
    assert len(PYTHON_BLOCKS) >= 4
    modules = {module for _, module, _, fenced in MODULE_CALLS if fenced}
    assert {"vit", "dalle", "core_attention.examples.seq2seq"} <= modules
    # Links and pictures point at files of the repository.
    for target in re.findall(r"\]\(([^)#\s]+)", text):
        if not re.match(r"[a-z]+://", target):
            assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"


# ---------------------------------------------------------------------------------------------- command lines


def _exit_code(main, argv: list[str]) -> int:
    """What the process would exit with: main's return value (0 for None and non-ints) or its SystemExit code."""
    try:
        result = main(argv)
    except SystemExit as exit_:
        if isinstance(exit_.code, str):  # sys.exit("message") exits 1
            return 1
        return exit_.code or 0
    return result if isinstance(result, int) else 0


def _lightning_parses(main, argv: list[str], capsys) -> None:
    """LightningCLI resolves every option against the real classes and prints the config instead of running."""
    code = _exit_code(main, [*argv, "--print_config"])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    assert "trainer:" in printed.out


def _check_config(args: list[str]) -> None:
    for i, arg in enumerate(args):
        if arg in ("--config", "-c"):
            path = args[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            continue
        assert path.startswith("configs/"), f"--config {path}: README configs live in configs/"
        assert (ROOT / path).is_file(), f"--config {path} does not exist"


@pytest.mark.parametrize(
    "line, module, args, fenced", MODULE_CALLS, ids=[f"line{c[0]}-{c[1]}-{(c[2] or ['-'])[0]}" for c in MODULE_CALLS]
)
def test_readme_command_parses(line: int, module: str, args: list[str], fenced: bool, monkeypatch, capsys) -> None:
    """A shell-block command line parses in full; a `python -m ...` span in the prose may be partial (`python -m dalle
    fit-vae`), so only its module, subcommand and --config are checked. Help requests must exit 0."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [f"python -m {module}"])  # as on the command line: LightningCLI reads sys.argv[0]
    _check_config(args)
    subcommand, rest = (args[0], args[1:]) if args else ("", [])
    wants_help = any(a in ("-h", "--help") or a.endswith(".help") for a in args)
    lightning = ("fit", "validate", "test", "predict")
    if module == "vit":
        import vit.__main__ as cli
        from vit.clip.zero_shot import zero_shot_parser

        known = (*lightning, "attention", "zero-shot", "--help")
        assert subcommand in known, f"README.md:{line}: no `python -m vit {subcommand}`"
        main, lightning_cli = cli.main, subcommand in lightning
        parser = {"attention": cli.attention_parser, "zero-shot": zero_shot_parser}.get(subcommand, lambda: None)()
    elif module == "dalle":
        import dalle.__main__ as cli
        from dalle.generate import generate_parser
        from dalle.judges.clip_score_cli import clip_score_parser
        from dalle.judges.evaluate import evaluate_parser

        assert subcommand in (*cli.COMMANDS, "--help"), f"README.md:{line}: no `python -m dalle {subcommand}`"
        main, lightning_cli = cli.main, subcommand.startswith("fit")
        parsers = {"generate": generate_parser, "evaluate": evaluate_parser, "clip-score": clip_score_parser}
        parser = parsers.get(subcommand, lambda: None)()
        if subcommand == "demo":  # takes only --out DIR and --quick; running it is `make demo`
            assert all(a in ("--out", "--quick", "--help") or not a.startswith("-") for a in rest)
    elif module == "dalle.vae.convert_openai":
        import dalle.vae.convert_openai as cli
        from dalle.vae.dvae import DiscreteVAE

        main, lightning_cli, parser = cli.main, False, None
        if fenced and not wants_help:  # the real argument parsing, with the conversion itself left out
            converted = []
            monkeypatch.setattr(
                cli, "convert", lambda *a, **k: converted.append(a) or DiscreteVAE(hidden_dim=8, codebook_dim=8)
            )
            assert cli.main(args) == 0 and len(converted) == 1
    elif module == "core_attention.examples.seq2seq":
        import core_attention.examples.seq2seq as cli

        assert subcommand in (*lightning, "demo"), f"README.md:{line}: no `python -m {module} {subcommand}`"
        main, lightning_cli, parser = cli.main, subcommand in lightning, None
    else:
        pytest.fail(f"README.md:{line} runs `python -m {module}`, which this test does not know: add it here")

    if wants_help:
        assert _exit_code(main, args) == 0, capsys.readouterr().err[-3000:]
    elif fenced and lightning_cli:
        _lightning_parses(main, args, capsys)
    elif fenced and parser is not None:
        parser.parse_args(rest)


# ---------------------------------------------------------------------------------------------- python blocks


@pytest.fixture(scope="module")
def readme_cwd(tmp_path_factory) -> Path:
    """A working directory holding every file the README's Python blocks read."""
    from dalle.demo import write_digit_image

    cwd = tmp_path_factory.mktemp("readme")
    write_digit_image(cwd / "runs/demo/shipped/digit.png")  # as `make demo` writes it
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(cwd / "photo.jpg")
    pairs = cwd / "data" / "pairs"
    (pairs / "dogs").mkdir(parents=True)
    for i, (name, caption) in enumerate(
        [("0001", "a red square\na square, red"), ("0002", "a blue circle"), ("dogs/rex", "a dog on a beach")]
    ):
        Image.fromarray(rng.integers(0, 256, (24 + 8 * i, 32, 3), dtype=np.uint8)).save(pairs / f"{name}.png")
        (pairs / f"{name}.txt").write_text(caption + "\n")
    return cwd


@pytest.fixture
def offline_timm(monkeypatch):
    """timm.create_model without downloads: the named model with 2 blocks (fast on a CPU) and random weights
    instead of the pretrained ones, seeded, so that the same name gives the same weights every time, as pretrained
    ones would."""
    import timm

    create = timm.create_model

    def create_offline(name: str, pretrained: bool = False, **kwargs):
        torch.manual_seed(0)
        return create(name, pretrained=False, **{"depth": 2, **kwargs})

    monkeypatch.setattr(timm, "create_model", create_offline)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("line, code", PYTHON_BLOCKS, ids=[f"line{line}" for line, _ in PYTHON_BLOCKS])
def test_readme_python_block_runs(line: int, code: str, readme_cwd: Path, offline_timm, monkeypatch, capsys) -> None:
    monkeypatch.chdir(readme_cwd)
    torch.manual_seed(0)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    assert printed.strip(), f"the README block at line {line} prints nothing to show it worked"
