"""`srgan benchmark train`: the JSON it prints, on a tiny model with a couple of short runs."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from srgan_cli.benchmark import conv_flops
from srgan_cli.cli.app import app
from srgan_cli.sr.models import SRResNet, SRResNetConfig


def test_benchmark_train_json_schema() -> None:
    args = ["benchmark", "train", "--n-blocks", "1", "--n-feats", "8", "--crop", "32", "--batch-size", "2"]
    args += ["--steps", "2", "--warmup", "1", "--device", "cpu", "--content-layer", "vgg22", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["stage"] for r in rows] == ["pretrain", "gan"]
    for r in rows:
        assert r["crops_per_s"] > 0 and r["ms_per_step"] > 0 and r["reference_gflops"] > 0
        assert r["steps"] == 2 and r["batch_size"] == 2 and r["crop"] == 32
        assert r["fraction_of_reference"] > 0 and r["peak_memory_mb"] > 0
        lo, hi = r["ms_per_step_spread"]
        assert lo <= r["ms_per_step"] <= hi
    assert rows[1]["vgg"] == "random (speed only)" and rows[1]["gflop_per_crop"] > rows[0]["gflop_per_crop"]
    assert all(r["step_mode"] == "plain" and r["profile"] is None for r in rows)  # auto: plain on the CPU


def test_benchmark_train_compares_step_modes_and_profiles() -> None:
    args = ["benchmark", "train", "--stage", "pretrain", "--n-blocks", "1", "--n-feats", "8", "--crop", "32"]
    args += [
        "--batch-size",
        "2",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--device",
        "cpu",
        "--fast-step",
        "compare",
    ]
    result = CliRunner().invoke(app, [*args, "--profile", "--profile-steps", "2", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["stage"], r["step_mode"]) for r in rows] == [("pretrain", "plain"), ("pretrain", "fast")]
    plain, fast = (r["profile"] for r in rows)
    for prof in (plain, fast):
        assert prof["steps"] == 2 and prof["wall_ms_per_step"] > 0 and prof["ops_per_step"] > 0
        assert prof["kernels_per_step"] is None and prof["device_idle_share"] is None  # no GPU here
        assert (
            0 < len(prof["top"]) <= 12
            and {"name", "calls_per_step", "ms_per_step", "share"} <= prof["top"][0].keys()
        )
        assert sum(row["share"] for row in prof["top"]) <= 1.0 + 1e-6
    assert fast["ops_per_step"] < plain["ops_per_step"]  # fused Adam, one-op EMA and logging

    table = CliRunner().invoke(app, [*args, "--profile", "--profile-steps", "1"])
    assert table.exit_code == 0, table.output
    assert (
        "pretrain: fast step (fast) / plain = " in table.output and "top ops by CPU self time" in table.output
    )


def test_benchmark_train_times_the_restore_step_on_damaged_lr() -> None:
    """--stage restore: the front-end's step alone (its FLOPs, not the frozen SR network's), with
    LR by --degradation (noisy unless told); a bicubic LR is refused as `srgan train` refuses it."""
    args = ["benchmark", "train", "--stage", "restore", "--n-blocks", "2", "--n-feats", "8", "--crop", "32"]
    args += ["--batch-size", "2", "--steps", "2", "--warmup", "1", "--device", "cpu", "--restore-blocks", "2"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert (row["stage"], row["degradation"]) == ("restore", "noisy")
    assert row["model"] == "srresnet 2x8 x4, front-end 2x64" and row["crops_per_s"] > 0
    front = SRResNet(SRResNetConfig(n_blocks=2, n_feats=8, restore_blocks=2)).restore
    lr = torch.zeros(2, 3, 8, 8)  # the probe's two LR crops (crop 32 / 4)
    assert row["gflop_per_crop"] == round(3 * conv_flops(front, lr) / 1e9, 3)

    refused = CliRunner().invoke(app, [*args, "--degradation", "bicubic"])
    assert refused.exit_code == 2 and "learns to undo damage" in refused.output


def test_benchmark_train_compares_precisions_in_one_process() -> None:
    """--amp compare: the fp32 step, then the bf16 one (on the CPU as on a GPU), and their ratio."""
    args = ["benchmark", "train", "--stage", "pretrain", "--n-blocks", "1", "--n-feats", "8", "--crop", "32"]
    args += ["--batch-size", "2", "--steps", "2", "--warmup", "1", "--device", "cpu", "--amp", "compare"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["stage"], r["amp"]) for r in rows] == [("pretrain", "off"), ("pretrain", "bf16")]
    assert all(r["crops_per_s"] > 0 for r in rows)

    table = CliRunner().invoke(app, args)
    assert table.exit_code == 0, table.output
    assert "pretrain (plain): amp bf16 / off = " in table.output
    assert "cpu, amp" not in table.output and "┃ amp" in table.output  # a column, not the title
    both = CliRunner().invoke(app, [*args, "--fast-step", "compare"])
    assert both.exit_code == 2 and "--amp and --fast-step each compare two runs" in both.output


def test_conv_flops_counts_the_paper_generator() -> None:
    # 16x64 SRResNet x4 on a 24x24 LR crop: hand count of its convolutions
    model = SRResNet(SRResNetConfig(4, 16, 64))
    per_px = 2 * (81 * 3 * 64 + 33 * 9 * 64 * 64)  # head 9x9, 2 convs per block + body tail, at LR
    per_px += 2 * 9 * 64 * 256  # first upsample conv at LR
    flops = per_px * 24 * 24 + 2 * 9 * 64 * 256 * 48 * 48 + 2 * 81 * 64 * 3 * 96 * 96
    assert conv_flops(model.eval(), torch.rand(1, 3, 24, 24)) == flops


def test_gpu_busy_time_is_the_union_of_kernel_intervals() -> None:
    """What the profile's GPU-idle share rests on (kernels on several streams may overlap)."""
    from srgan_cli.benchmark import _busy_us

    assert _busy_us([]) == 0.0
    assert _busy_us([(0, 10), (5, 12), (20, 25), (21, 22)]) == 17.0
    assert _busy_us([(3, 4), (0, 1)]) == 2.0
