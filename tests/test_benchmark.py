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


def test_conv_flops_counts_the_paper_generator() -> None:
    # 16x64 SRResNet x4 on a 24x24 LR crop: hand count of its convolutions
    model = SRResNet(SRResNetConfig(4, 16, 64))
    per_px = 2 * (81 * 3 * 64 + 33 * 9 * 64 * 64)  # head 9x9, 2 convs per block + body tail, at LR
    per_px += 2 * 9 * 64 * 256  # first upsample conv at LR
    flops = per_px * 24 * 24 + 2 * 9 * 64 * 256 * 48 * 48 + 2 * 81 * 64 * 3 * 96 * 96
    assert conv_flops(model.eval(), torch.rand(1, 3, 24, 24)) == flops
