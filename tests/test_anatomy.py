"""``forgetlab anatomy``: every method's trainable parameters on a backbone, before any run, equal to
what a run records, and the reasons a method does not apply."""

from __future__ import annotations

from forgetlab import config as config_module
from forgetlab.method_anatomy import anatomy


def test_vit_b16_counts_are_the_published_ones():
    """The counts the run records for a random vit_base_patch16_224 (README: linear 0, LoRA r=4 on q,v
    147,456, top-3 21,263,616 + 1,536, block expansion p=1 7,087,872, full 85,798,656)."""
    config = config_module.resolve(
        {}, ["backbone.name=vit_base_patch16_224", "method.name=lora", "method.targets=q,v", "method.rank=4"]
    )
    result = anatomy(config)
    counts = {row.method.split("(")[0]: row.trainable for row in result.methods}
    assert counts == {
        "block_expansion": 7_087_872,
        "full": 85_798_656,
        "fullrank": 12 * 768 * 2304,
        "linear": 0,
        "lora": 147_456,
        "topk": 21_263_616 + 1_536,
    }
    assert result.family == "vit" and len(result.lora_targets) == 12
    assert (
        result.parameters == 85_798_656
    )  # 86,567,656 less the 1000-class upstream head: the rows' own denominator (full = 100 %)
    assert "lora(rank=4" in result.format() and "blocks.*.attn.qkv (12)" in result.lora_note


def test_other_families_and_what_does_not_apply():
    resnet = anatomy(config_module.resolve({}, ["backbone.name=resnet50"]))
    rows = {row.method.split("(")[0]: row for row in resnet.methods}
    assert rows["block_expansion"].trainable is None and "needs a sequence of blocks" in rows["block_expansion"].note
    assert rows["lora"].trainable == sum(4 * (conv.in_channels + conv.out_channels) for conv in _conv3s())
    swin = anatomy(
        config_module.resolve(
            {},
            [
                "backbone.name=swin_tiny_patch4_window7_224",
                "backbone.image_size=32",
                "backbone.kwargs={patch_size: 2, window_size: 4, embed_dim: "
                "16, depths: [1, 1, 2, 1], num_heads: [1, 1, 2, 2]}",
            ],
        )
    )
    assert swin.family == "swin" and all(row.trainable is not None for row in swin.methods)
    mixer = anatomy(config_module.resolve({}, ["backbone.name=mixer_s16_224"]))
    assert mixer.family is None and mixer.lora_targets == [] and "has no default LoRA targets" in mixer.lora_note


def _conv3s():
    from forgetlab.models.backbones import create

    return [m for n, m in create("resnet50", num_classes=10).named_modules() if n.endswith("conv3")]


def test_the_cli_prints_the_table(capsys):
    from forgetlab.cli import main

    assert main(["anatomy", "backbone.name=offline_resnet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("offline_resnet: ResNet, resnet family") and "| lora(rank=4" in out
    assert main(["anatomy", "backbone.name=nope"]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .startswith("forgetlab: error: unknown backbone 'nope'; use offline_vit, offline_resnet or a timm model name")
    )


def test_from_python_as_a_dataframe():
    import forgetlab

    table = forgetlab.anatomy(backbone__name="offline_vit", method__name="lora", method__rank=8)
    assert table.attrs["family"] == "vit" and len(table.attrs["lora_targets"]) == 6
    lora = table.loc[[m for m in table.index if m.startswith("lora(")][0]]
    assert lora["trainable"] == 6 * 8 * (128 + 384)  # rank x (in + out) on each block's qkv
    assert (
        table.loc["linear()", "trainable"] == 0 and table.loc["full()", "trainable_pct"] == 100
    )  # the upstream head is not counted
