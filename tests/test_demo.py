"""`python -m dalle demo`: the stages it runs, the budgets it passes, and that a second run reuses what was trained."""

import json
from pathlib import Path

from dalle import demo


def _fake_run(calls: list[list[str]]):
    def run(stage: str, *args: str) -> None:
        calls.append(list(args))
        opts = dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)
        if args[:2] == ("vit", "fit"):
            ckpt = Path(opts["--trainer.default_root_dir"]) / "checkpoints" / "last.ckpt"
        elif args[:2] == ("dalle", "fit-vae"):
            ckpt = Path(opts["--model.export_dir"]) / "model.safetensors"
        elif args[:2] == ("dalle", "fit"):
            ckpt = Path(opts["--model.export_dir"]) / "model.safetensors"
        elif args[:2] == ("dalle", "evaluate"):
            ckpt = Path(args[args.index("--out") + 1]) / "report.json"
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            ckpt.write_text(json.dumps({"summary": {"held_in": {"all": 0.5}}}))
            return
        else:
            return
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        ckpt.write_bytes(b"")

    return run


def test_demo_stages_budgets_and_reuse(tmp_path, monkeypatch, capsys) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(demo, "run", _fake_run(calls))
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out)]) == 0
    commands = [c[:2] for c in calls]
    assert commands == [
        ["vit", "fit"],
        ["vit", "test"],
        ["vit", "attention"],
        ["dalle", "fit-vae"],
        ["dalle", "fit"],
        ["dalle", "generate"],
        ["dalle", "evaluate"],
    ]
    by_name = {tuple(c[:2]): c for c in calls}
    assert (
        "--trainer.max_steps=1000" in by_name["dalle", "fit-vae"]
        and "--trainer.max_steps=450" in by_name["dalle", "fit"]
    )
    assert f"--model.export_dir={out / 'dalle' / 'dalle'}" in by_name["dalle", "fit"]  # everything stays under --out
    assert f"--trainer.logger.init_args.save_dir={out / 'dvae'}" in by_name["dalle", "fit-vae"]
    for fit in (by_name["vit", "fit"], by_name["dalle", "fit-vae"], by_name["dalle", "fit"]):
        assert "--ckpt_path=last-or-new" in fit  # a demo stopped half-way resumes instead of being refused
    for sampled in (by_name["dalle", "generate"], by_name["dalle", "evaluate"]):
        assert "--guidance-scale" in sampled and "--top-p" in sampled
    assert (out / "vit" / "digit.png").is_file()
    printed = capsys.readouterr().out
    assert "generated grid" in printed and "held_in" in printed

    calls.clear()  # a second run trains nothing again, only regenerates pictures and figures
    assert demo.main(["--out", str(out), "--quick"]) == 0
    assert [c[:2] for c in calls] == [
        ["vit", "test"],
        ["vit", "attention"],
        ["dalle", "generate"],
        ["dalle", "evaluate"],
    ]


def test_quick_budget_is_smaller(tmp_path, monkeypatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(demo, "run", _fake_run(calls))
    assert demo.main(["--out", str(tmp_path / "q"), "--quick"]) == 0
    by_name = {tuple(c[:2]): c for c in calls}
    assert "--trainer.max_epochs=10" in by_name["vit", "fit"] and "--trainer.max_steps=300" in by_name["dalle", "fit"]
