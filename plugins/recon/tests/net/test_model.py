"""The bone network's context blocks: the identity when new, global mixing, heads, files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from regkit_recon.net.model import BoneNet, NetConfig, _Context, load_model, save_model

from regkit.errors import FileFormatError, InputError


def test_context_blocks_see_the_whole_image_and_round_trip(tmp_path: Path) -> None:
    """Context blocks: a new one is the identity; a trained one mixes every cell.

    A change in one cell of the coarsest grid moves every cell; the model file loads back the
    same; a configuration without the key (older files) means no blocks.
    """
    config = NetConfig((1, 2), ("a", "b"), size=32, widths=(8, 16), stem=8, context=1)
    assert NetConfig.from_json(config.to_json()) == config
    old = config.to_json()
    del old["context"]
    assert NetConfig.from_json(old).context == 0
    assert "context" not in NetConfig((1, 2), ("a", "b"), size=32).to_json()  # files as before
    torch.manual_seed(0)
    net = BoneNet(config).eval()
    feat = torch.randn((1, 16, 8, 8))  # the coarsest level of a 32² input: 8 × 8 cells
    poked = feat.clone()
    poked[0, :, 0, 0] += 3.0 * torch.randn(16)  # not a constant: LayerNorm removes those
    with torch.no_grad():
        assert torch.equal(net.context(feat), feat)
        for p in net.context.parameters():  # as if trained: off the identity
            p.add_(0.1 * torch.randn_like(p))
        moved = (net.context(feat) - net.context(poked)).abs().amax(1)[0]
    assert bool((moved > 1e-6).all())
    save_model(tmp_path / "m.pt", net, half=False)
    back = load_model(tmp_path / "m.pt").net
    x = torch.rand((1, 1, 32, 32))
    with torch.no_grad():
        for k, v in net(x).items():
            assert torch.allclose(v, back(x)[k], atol=1e-5), k


def test_a_context_block_is_attention_head_by_head() -> None:
    """Five heads of 32 channels (a width of 160, as shipped), against attention written out."""
    torch.manual_seed(1)
    block = _Context(160, 16).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.05 * torch.randn_like(p))
        x = torch.randn((2, 160, 4, 4))
        t = x.flatten(2).transpose(1, 2)  # (B, 16, 160)
        q, k, v = block.qkv(block.norm1(t + block.where)).chunk(3, dim=-1)
        heads = []
        for h in range(5):
            part = slice(32 * h, 32 * (h + 1))
            w = (q[..., part] @ k[..., part].transpose(1, 2) / 32 ** 0.5).softmax(-1)
            heads.append(w @ v[..., part])
        t = t + block.proj(torch.cat(heads, dim=-1))
        t = t + block.mlp(block.norm2(t))
        want = t.transpose(1, 2).reshape(x.shape)
        assert block.heads == 5
        assert torch.allclose(block(x), want, atol=1e-5)
        # the items of a batch do not see each other
        assert torch.allclose(block(x[:1]), want[:1], atol=1e-5)


def test_context_under_bfloat16_and_the_input_size() -> None:
    """Context blocks under CPU bfloat16 autocast, and the input size they fix.

    The network runs under autocast (its heads in float32); it refuses an input of another size
    by name (the cell embedding fixes the grid).
    """
    torch.manual_seed(0)
    net = BoneNet(NetConfig((1, 2), ("a", "b"), size=64, widths=(32, 64), stem=8, context=1))
    with torch.no_grad():
        for p in net.context.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand((2, 1, 64, 64))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    with torch.no_grad():
        ref = net(x)
    assert out["logits"].dtype == torch.float32
    for key in ref:
        assert bool(torch.isfinite(out[key]).all()), key
    # bfloat16 keeps 8 bits of mantissa: the probabilities agree to a few hundredths
    assert float((F.sigmoid(out["logits"]) - F.sigmoid(ref["logits"])).abs().max()) < 0.05
    with pytest.raises(InputError, match="64×64 inputs"):
        net(torch.rand((1, 1, 32, 32)))


def test_model_file_versions(tmp_path: Path) -> None:
    """Model files: 5 refined, 4 with the last exit, 3 a grown head, 2 context blocks, else 1.

    Older readers keep reading the files they can build; version-1 files with context blocks
    (written before version 2) load too; an unknown version is refused.
    """
    plain = BoneNet(NetConfig((1, 2), ("a", "b"), size=32, widths=(8, 16), stem=8))
    ctx = BoneNet(NetConfig((1, 2), ("a", "b"), size=32, widths=(8, 16), stem=8, context=1))
    wide = BoneNet(NetConfig((1, 2), ("a", "b"), size=32, widths=(8, 16), stem=8, head=16))
    deep = BoneNet(NetConfig((1, 2), ("a", "b"), size=32, widths=(8, 16), stem=8,
                             head_blocks=1))
    last = BoneNet(NetConfig((1, 2), ("a", "b"), size=32, widths=(8, 16), stem=8, last=True))
    refined = BoneNet(NetConfig((1, 2), ("a", "b"), size=32, widths=(8, 16), stem=8, last=True,
                                refine=8))
    for name, net, version in (("plain", plain, 1), ("ctx", ctx, 2), ("wide", wide, 3),
                               ("deep", deep, 3), ("last", last, 4), ("refined", refined, 5)):
        save_model(tmp_path / f"{name}.pt", net)
        blob = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        assert blob["version"] == version
        assert load_model(tmp_path / f"{name}.pt").net.config == net.config
    blob = torch.load(tmp_path / "ctx.pt", weights_only=True)
    blob["version"] = 1  # as files with context blocks were written before version 2
    torch.save(blob, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").net.config.context == 1
    blob["version"] = 6
    torch.save(blob, tmp_path / "new.pt")
    with pytest.raises(FileFormatError, match="model format version 6, this regkit-recon reads "
                       "1, 2, 3, 4 and 5"):
        load_model(tmp_path / "new.pt")


def test_head_options() -> None:
    """``head`` and ``head_blocks``: left out of the JSON at 0, round-tripped, checked.

    The head's GroupNorm groups hold as many channels as the stem's, so its width must be a
    multiple of that group size.
    """
    base = NetConfig((1, 2), ("a", "b"), size=32, widths=(8, 16), stem=16, groups=8)
    assert not {"head", "head_blocks"} & set(base.to_json())
    assert (base.head_width, base.group_size) == (16, 2)
    grown = NetConfig((1, 2), ("a", "b"), size=32, widths=(8, 16), stem=16, groups=8, head=48,
                      head_blocks=2)
    assert NetConfig.from_json(grown.to_json()) == grown
    net = BoneNet(grown)
    assert (net.seg.in_channels, len(net.polish)) == (48, 2)
    norm = net.finish[1]
    assert isinstance(norm, torch.nn.GroupNorm)
    assert norm.num_groups == 24
    x = torch.rand((1, 1, 32, 32))
    out = net(x)
    assert out["logits"].shape == (1, 2, 32, 32)
    for bad, key in (({"head": 5}, "head"), ({"head": -2}, "head"),
                     ({"head_blocks": -1}, "head_blocks")):
        with pytest.raises(InputError) as info:
            NetConfig((1, 2), ("a", "b"), size=32, widths=(8, 16), stem=16, groups=8,
                      head=bad.get("head", 0), head_blocks=bad.get("head_blocks", 0))
        assert info.value.key == key


def test_the_last_exit_lies_at_or_beyond_the_back() -> None:
    """``last``: a third map per bone, at or below ``back`` whatever the weights.

    Left out of the JSON when off, round-tripped when on; the other outputs are computed as
    without it.
    """
    base = NetConfig((1, 2, 3), ("a", "b", "c"), size=32, widths=(8, 16), stem=8)
    assert "last" not in base.to_json()
    config = replace(base, last=True)
    assert NetConfig.from_json(config.to_json()) == config
    assert config.to_json()["last"] is True
    with pytest.raises(InputError, match="true or false") as info:
        NetConfig.from_json({**config.to_json(), "last": "false"})
    assert info.value.key == "last"
    net = BoneNet(config).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    x = torch.rand((2, 1, 32, 32), generator=g)
    with torch.no_grad():
        out = net(x)
    assert set(out) == {"logits", "front", "back", "last"}
    assert out["last"].shape == out["back"].shape == (2, 3, 32, 32)
    assert bool((out["last"] <= out["back"]).all())
    assert float((out["back"] - out["last"]).max()) > 0.01   # not stuck at the back
    plain = BoneNet(base).eval()   # the same weights but the gap channels'
    state = net.state_dict()
    state["depth_out.weight"] = state["depth_out.weight"][:6]
    state["depth_out.bias"] = state["depth_out.bias"][:6]
    plain.load_state_dict(state)
    with torch.no_grad():
        want = plain(x)
    for key in want:   # to float rounding: a convolution of more channels sums otherwise
        assert torch.allclose(want[key], out[key], atol=1e-5), key
    fresh = BoneNet(config)     # a new network's last exit starts near its back
    with torch.no_grad():
        gap = (lambda o: o["back"] - o["last"])(fresh(x))
    assert float(gap.min()) > 0
    assert float(gap.median()) == pytest.approx(0.0025, abs=0.001)   # softplus(-6)
    assert float(gap.max()) < 0.05


def test_the_depth_refinement_starts_as_nothing() -> None:
    """``refine``: a new refinement adds nothing; a trained one moves the heights, not the masks.

    Left out of the JSON at 0, round-tripped, checked (a multiple of the GroupNorm groups);
    front >= back >= last hold whatever its weights.
    """
    base = NetConfig((1, 2, 3), ("a", "b", "c"), size=32, widths=(8, 16), stem=8, last=True)
    assert "refine" not in base.to_json()
    config = replace(base, refine=8)
    assert NetConfig.from_json(config.to_json()) == config
    for bad in (-8, 5):
        with pytest.raises(InputError, match="multiple of 8") as info:
            replace(base, refine=bad)
        assert info.value.key == "refine"
    g = torch.Generator().manual_seed(3)
    net = BoneNet(config).eval()
    plain = BoneNet(base).eval()
    with torch.no_grad():
        for p in plain.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    missing, unexpected = net.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected
    assert {k.split(".")[0] for k in missing} == {"refine", "refine_out"}
    x = torch.rand((2, 1, 32, 32), generator=g)
    with torch.no_grad():
        want, got = plain(x), net(x)
        for key in want:
            assert torch.equal(got[key], want[key]), key
        for p in net.refine_out.parameters():          # as if trained
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
        moved = net(x)
    assert set(moved) == set(want)
    assert bool((moved["front"] >= moved["back"]).all())
    assert bool((moved["back"] >= moved["last"]).all())
    assert float((moved["front"] - want["front"]).abs().max()) > 1e-3
    assert torch.equal(moved["logits"], want["logits"])  # the masks are not the refinement's
