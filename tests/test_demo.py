"""`python -m dalle demo`: shipped models first, then short training runs; the budgets it passes; a second run reuses
what was trained. The stages are faked here (each is a CLI with its own tests); `make demo` runs them for real."""

import json
from pathlib import Path

from dalle import demo

FIT_OUTPUTS = {  # what each training stage leaves behind, by the option that names where
    ("vit", "fit"): lambda opts: Path(opts["--trainer.default_root_dir"]) / "checkpoints" / "last.ckpt",
    ("dalle", "fit-vae"): lambda opts: Path(opts["--model.export_dir"]) / "model.safetensors",
    ("dalle", "fit"): lambda opts: Path(opts["--model.export_dir"]) / "model.safetensors",
}
SUMMARY = {s: {"shape": 1.0, "colour": 1.0, "size": 0.75, "position": 0.5, "all": 0.5} for s in ("held_in", "held_out")}


def _fake_run(calls: list[list[str]]):
    def run(stage: str, *args: str) -> None:
        calls.append(list(args))
        opts = dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)
        if args[:2] == ("dalle", "evaluate"):
            report = Path(args[args.index("--out") + 1]) / "report.json"
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(json.dumps({"summary": SUMMARY}))
        elif args[:2] in FIT_OUTPUTS:
            made = FIT_OUTPUTS[args[:2]](opts)
            made.parent.mkdir(parents=True, exist_ok=True)
            made.write_bytes(b"")

    return run


def _commands(calls: list[list[str]]) -> list[list[str]]:
    return [c[:2] for c in calls]


SHIPPED = [["dalle", "generate"], ["dalle", "evaluate"], ["vit", "predict"], ["vit", "attention"]]


def test_demo_shows_shipped_models_first_then_trains_and_reuses(tmp_path, monkeypatch, capsys) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(demo, "run", _fake_run(calls))
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out)]) == 0
    assert _commands(calls) == [
        *SHIPPED,
        ["vit", "fit"],
        ["vit", "test"],
        ["dalle", "fit-vae"],
        ["dalle", "fit"],
        ["dalle", "generate"],
    ]
    shipped_generate, trained_generate = calls[0], calls[-1]
    assert "--checkpoint" not in shipped_generate and "--rerank" in shipped_generate  # the shipped default
    assert trained_generate[trained_generate.index("--checkpoint") + 1] == str(out / "dalle/checkpoints/last.ckpt")
    assert "--checkpoint" not in calls[2] and "--config" not in calls[2]  # vit predict: the shipped ViT
    by_name = {tuple(c[:2]): c for c in calls}
    assert (
        "--trainer.max_steps=300" in by_name["dalle", "fit-vae"]
        and "--trainer.max_steps=150" in by_name["dalle", "fit"]
    )
    assert f"--model.export_dir={out / 'dalle' / 'dalle'}" in by_name["dalle", "fit"]  # everything stays under --out
    for fit in (by_name["vit", "fit"], by_name["dalle", "fit-vae"], by_name["dalle", "fit"]):
        assert "--ckpt_path=last-or-new" in fit  # a demo stopped half-way resumes instead of being refused
    assert (out / "shipped" / "digit.png").is_file() and (out / "vit" / "digit.png").is_file()
    printed = capsys.readouterr().out
    assert "held_in: all attributes right 50.0% (shape 100.0%, colour 100.0%, size 75.0%, position 50.0%)" in printed
    assert "python -m dalle app" in printed and "not how the shipped models were made" in demo.__doc__

    calls.clear()  # a second run trains nothing again: shipped models, the test accuracy, the trained model's pictures
    assert demo.main(["--out", str(out), "--quick"]) == 0
    assert _commands(calls) == [*SHIPPED, ["vit", "test"], ["dalle", "generate"]]


def test_quick_budget_is_smaller() -> None:
    full, quick = demo.BUDGETS["full"], demo.BUDGETS["quick"]
    option = lambda budget, name: int(budget["evaluate"][budget["evaluate"].index(name) + 1])
    samples = lambda budget: option(budget, "--num-prompts") * option(budget, "--candidates")
    assert samples(quick) < samples(full)
    steps = lambda budget, stage: int(budget[stage][0].split("=")[1])
    assert all(steps(quick, s) < steps(full, s) for s in ("vit", "dvae", "dalle"))
