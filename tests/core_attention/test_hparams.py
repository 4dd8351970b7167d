"""Older releases' checkpoint hyper-parameters in today's names (core_attention.training.hparams)."""

from dataclasses import dataclass

from core_attention.training.hparams import nest_arch, upgrade_lambda_lr_checkpoint


@dataclass
class Arch:
    dim: int = 8
    depth: int = 2


def test_nest_arch_moves_flat_fields_and_renames():
    old = {"dim": 16, "depth": 3, "lr": 1e-3, "lr_end": 1e-5}
    new = nest_arch(old, Arch, renamed={"lr_end": "min_lr"})
    assert new == {"arch": {"dim": 16, "depth": 3}, "lr": 1e-3, "min_lr": 1e-5}
    assert nest_arch(new, Arch, renamed={"lr_end": "min_lr"}) == new  # today's hyper-parameters stay as they are
    assert nest_arch({"config": {"dim": 4}, "lr": 1.0}, (), renamed={"config": "arch"}) == {
        "arch": {"dim": 4},
        "lr": 1.0,
    }


def test_lambda_lr_state_is_dropped_and_optimizer_groups_swapped():
    groups = [{"params": [0, 1], "weight_decay": 0.1}, {"params": [2], "weight_decay": 0.0}]
    checkpoint = {
        "lr_schedulers": [{"lr_lambdas": [None], "last_epoch": 3}],
        "optimizer_states": [{"param_groups": groups}],
    }
    upgrade_lambda_lr_checkpoint(checkpoint)
    assert checkpoint["lr_schedulers"] == [{}]
    assert [g["weight_decay"] for g in checkpoint["optimizer_states"][0]["param_groups"]] == [0.0, 0.1]
    timm = {"lr_schedulers": [{"t_initial": 10}], "optimizer_states": [{"param_groups": groups[::-1]}]}
    upgrade_lambda_lr_checkpoint(timm)  # a checkpoint of today's schedule is left alone
    assert timm == {"lr_schedulers": [{"t_initial": 10}], "optimizer_states": [{"param_groups": groups[::-1]}]}
