"""CSFRNet Table 2 (ResNet-50, 512x512): parameters and GFLOPs of the four baselines and +CSFLM, from
the packaged Cityscapes CSFRNet recipes with the backbone set to ResNet-50, built on the meta device.

Table 2's "GFLOPs" are multiply-accumulates (mmcv's ``get_flops`` convention), compared with
``summary(...).total_macs``; the auxiliary head's parameters count, its MACs do not (it runs in
training only). "+CSFLM" is the CSFLM-only network (``aam=False``: Tables 1-5 concatenate the C-S
features into the original ones).
"""
from __future__ import annotations

import pytest
import torch

from fastseg.engine.builders import build_model_from_config
from fastseg.engine.config import load_config
from fastseg.models import summary

# name: ((baseline M params, baseline GFLOPs), (+CSFLM M params, +CSFLM GFLOPs)), Table 2 as printed.
TABLE2 = {
    "fcn": ((37.70, 149.40), (40.36, 160.28)),
    "pspnet": ((48.98, 178.48), (51.63, 189.36)),
    "nonlocal": ((50.02, 239.88), (52.68, 250.75)),
    "deeplabv3plus": ((43.59, 176.36), (46.25, 187.24)),
}


def recipe_complexity(baseline: str, csflm: bool) -> tuple[float, float]:
    """(M parameters, GMACs at 1x3x512x512) of the ``cityscapes/csfrnet_<baseline>_r101`` recipe's
    network on ResNet-50: the CSFLM-only CSFRNet, or (``csflm=False``) the baseline it is built on."""
    config = load_config(f"cityscapes/csfrnet_{baseline}_r101")
    model = config["model"]
    assert model["name"] == f"csfrnet_{baseline}"
    model["backbone"] = "resnet50"
    if csflm:
        model["options"]["aam"] = False
    else:
        model["name"] = baseline
    with torch.device("meta"):
        network = build_model_from_config(config)
    result = summary(network, (1, 3, 512, 512), print_table=False)
    return result.total_params / 1e6, result.total_macs / 1e9


@pytest.mark.parametrize("baseline", list(TABLE2))
def test_recipe_networks_have_the_table2_parameters(baseline):
    for csflm, (params, _) in zip((False, True), TABLE2[baseline]):
        measured, _ = recipe_complexity(baseline, csflm)
        assert measured == pytest.approx(params, rel=0.01), f"{baseline} csflm={csflm}: {measured:.3f}M vs {params}M"


@pytest.mark.parametrize("baseline", ["fcn", "pspnet", "deeplabv3plus"])
def test_recipe_networks_have_the_table2_macs(baseline):
    for csflm, (_, gmacs) in zip((False, True), TABLE2[baseline]):
        _, measured = recipe_complexity(baseline, csflm)
        assert measured == pytest.approx(gmacs, rel=0.02), f"{baseline} csflm={csflm}: {measured:.2f}G vs {gmacs}G"


def test_nonlocal_csflm_increment_matches_table2():
    # CSFLM adds 10.87 G to the Non-local network in Table 2 (250.75 - 239.88), as to the others.
    (_, base), (_, with_csflm) = TABLE2["nonlocal"]
    increment = recipe_complexity("nonlocal", True)[1] - recipe_complexity("nonlocal", False)[1]
    assert increment == pytest.approx(with_csflm - base, rel=0.02)


@pytest.mark.xfail(
    strict=True,
    reason="Table 2's Non-local 239.88 G is not reproduced: mmsegmentation's NLHead (reduction 2, the 50.02M "
    "that matches) counts 208.3 G with its two attention matmuls (8.6 G); no count convention found gives +31.5 G",
)
def test_nonlocal_macs_match_table2():
    assert recipe_complexity("nonlocal", False)[1] == pytest.approx(TABLE2["nonlocal"][0][1], rel=0.02)


def test_summary_counts_the_deformable_convs_and_the_non_local_matmuls():
    # AAM's two deformable 3x3 convs at 64x64 (stride 8 of 512): (512 * 512 + 32 * 32) * 9 * 4096 MACs.
    config = load_config("cityscapes/csfrnet_nonlocal_r101")
    config["model"]["backbone"] = "resnet50"
    with torch.device("meta"):
        network = build_model_from_config(config)
    rows = {name: macs for name, _, macs in summary(network, (1, 3, 512, 512), depth=2, print_table=False).rows}
    offset = (512 + 32) * 2 * 9 * 9 * 4096  # the 3x3 offset conv E (18 channels) is a plain conv
    fuse = (512 + 32) * 512 * 4096
    assert rows["aggregation.aggregate"] + rows["aggregation.cs_aggregate"] == (512 * 512 + 32 * 32) * 9 * 4096
    assert rows["aggregation.offset"] == offset and rows["aggregation.fuse"] == fuse
    # The non-local block: theta, phi, g (512 -> 256), out (256 -> 512) 1x1 convs and 2 * 4096^2 * 256 matmul MACs.
    block = network.decode_head.non_local
    by_module = {name: macs for name, _, macs in summary(block, (1, 512, 64, 64), depth=1, print_table=False).rows}
    assert sum(by_module.values()) == 4 * 512 * 256 * 4096 + 2 * 4096 * 4096 * 256
