"""Text tokeniser and encoders, token image encoders, RGB/TIR fusion, CLIP helpers (no download, no open_clip).

The CLIP towers themselves are tested in test_clip.py (open_clip, random initialisation)."""

import sys

import pytest
import torch
import torch.nn.functional as F

from vireid.errors import CheckpointError, ConfigError, MissingDependencyError, WeightsNotFoundError
from vireid.models.clip import interpolate_positional_embedding, resolve_clip_weights
from vireid.models.fusion import GatedFusion, SumFusion, build_fusion
from vireid.models.image_encoders import ResNetTokenEncoder
from vireid.models.text import TinyTextEncoder, TokenBatch, WordTokenizer, mask_for_mlm, split_words

CAPTIONS = [
    "A woman in a red T-shirt and blue jeans.",
    "The man wears a black coat, grey trousers; white shoes!",
    "a woman with a red bag",
]


def test_split_words_lowercases_and_splits_on_non_letters():
    assert split_words("T-shirt, RED  coat's 2nd") == ["t", "shirt", "red", "coat", "s", "nd"]


def test_vocabulary_is_sorted_unique_and_encodes_with_specials():
    tok = WordTokenizer.from_captions(CAPTIONS, context_length=8)
    assert tok.words == sorted(set(tok.words))
    assert tok.vocab_size == 5 + len(tok.words)
    batch = tok.encode(["a red coat", "zebra red"])
    a, red, coat = (tok.words.index(w) + 5 for w in ("a", "red", "coat"))
    assert batch.ids[0].tolist() == [1, a, red, coat, 2, 0, 0, 0]
    assert batch.ids[1].tolist() == [1, WordTokenizer.UNK, red, 2, 0, 0, 0, 0]  # unknown word -> UNK
    assert batch.mask.tolist()[1] == [True] * 4 + [False] * 4
    assert tok.decode(batch.ids[0]) == "a red coat"


def test_truncation_keeps_eos_at_the_end():
    tok = WordTokenizer.from_captions(CAPTIONS, context_length=5)
    ids = tok.encode(["a woman in a red bag"]).ids[0].tolist()
    assert len(ids) == 5 and ids[0] == 1 and ids[-1] == 2
    assert tok.decode(ids) == "a woman in"


def test_min_count_and_empty_vocabulary():
    tok = WordTokenizer.from_captions(CAPTIONS, min_count=2)
    assert set(tok.words) == {"a", "red", "woman"}
    with pytest.raises(ConfigError, match="no words"):
        WordTokenizer.from_captions(["123 !!"])


def test_state_dict_round_trip_through_json():
    import json

    tok = WordTokenizer.from_captions(CAPTIONS, context_length=12)
    again = WordTokenizer.from_state_dict(json.loads(json.dumps(tok.state_dict())))
    assert again == tok
    assert torch.equal(again.encode(CAPTIONS).ids, tok.encode(CAPTIONS).ids)
    with pytest.raises(CheckpointError, match="vocabulary"):
        WordTokenizer.from_state_dict({"kind": "clip_bpe"})


def test_mlm_masking_follows_irra_proportions_and_never_touches_specials():
    tok = WordTokenizer.from_captions([" ".join(f"w{chr(97 + i)}{chr(97 + j)}" for i in range(6) for j in range(5))])
    ids = tok.encode([" ".join(tok.words)] * 400).ids  # 30 words per caption
    gen = torch.Generator().manual_seed(0)
    corrupted, labels = mask_for_mlm(ids, tok, 0.15, gen)
    chosen = labels != 0
    assert not bool((chosen & tok.special_mask(ids)).any())
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(corrupted[~chosen], ids[~chosen])
    rate = chosen[~tok.special_mask(ids)].float().mean().item()
    assert abs(rate - 0.15) < 0.01
    masked = (corrupted[chosen] == tok.MASK).float().mean().item()
    kept = (corrupted[chosen] == ids[chosen]).float().mean().item()
    assert abs(masked - 0.8) < 0.03 and 0.07 < kept < 0.14  # 10% kept (+ random draws of the same word)


def test_mlm_masks_first_word_when_nothing_is_chosen():
    tok = WordTokenizer.from_captions(CAPTIONS)
    ids = tok.encode(["a red coat"]).ids[0]
    _corrupted, labels = mask_for_mlm(ids, tok, probability=0.0, generator=torch.Generator().manual_seed(1))
    assert labels.nonzero().flatten().tolist() == [1]
    assert labels[1] == ids[1]


def test_tiny_text_encoder_feature_is_the_eos_token_and_ignores_padding_and_batchmates():
    torch.manual_seed(0)
    tok = WordTokenizer.from_captions(CAPTIONS, context_length=16)
    enc = TinyTextEncoder(tok, embed_dim=24, width=32, layers=2, heads=4).eval()
    batch = tok.encode(CAPTIONS)
    out = enc(batch)
    assert out.feature.shape == (3, 24) and out.tokens.shape == (3, 16, 24)
    eos = batch.mask.sum(1) - 1
    assert torch.allclose(out.feature, out.tokens[torch.arange(3), eos])
    alone = enc(tok.encode(CAPTIONS[2:]))  # same caption without batch-mates
    assert torch.allclose(alone.feature[0], out.feature[2], atol=1e-5)


def test_resnet_token_encoder_shapes_and_cls_row():
    enc = ResNetTokenEncoder(embed_dim=32, width=8).eval()
    out = enc(torch.randn(2, 3, 64, 32), return_layers=True)
    assert out.tokens.shape == (2, 1 + 4 * 2, 32)  # last stride 1: 16x down-sampling
    assert torch.equal(out.tokens[:, 0], out.cls)
    assert [tuple(x.shape) for x in out.layers] == [(2, 32, 16), (2, 8, 32), (2, 8, 64)]
    assert enc.layer_channels == (16, 32, 64)
    flat = enc.backbone(torch.zeros(1, 3, 64, 32))
    assert flat.shape[-2:] == (4, 2)


def test_sum_fusion_and_gated_fusion_are_per_token():
    r, t = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    assert torch.equal(SumFusion()(r, t), r + t)
    gated = GatedFusion(16).eval()
    full = gated(r, t)
    assert full.shape == (2, 5, 16)
    assert torch.allclose(gated(r[:, :1], t[:, :1])[:, 0], full[:, 0], atol=1e-6)  # row 0 needs only the CLS
    with pytest.raises(ValueError, match="fusion"):
        build_fusion("concat", 16)


def test_positional_embedding_interpolation_matches_a_direct_bilinear_resize():
    g, c = 14, 6
    pos = torch.randn(1 + g * g, c)
    out = interpolate_positional_embedding(pos, (24, 8))
    assert out.shape == (1 + 24 * 8, c)
    assert torch.equal(out[0], pos[0])  # class position kept
    grid = pos[1:].reshape(g, g, c).permute(2, 0, 1).unsqueeze(0)
    ref = F.interpolate(grid, size=(24, 8), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).reshape(-1, c)
    assert torch.allclose(out[1:], ref)
    # a table that is constant along columns stays constant along columns (row-major flattening)
    rows = torch.arange(g, dtype=torch.float32).repeat_interleave(g).unsqueeze(1)
    ramp = interpolate_positional_embedding(torch.cat([torch.zeros(1, 1), rows]), (24, 8))[1:].reshape(24, 8)
    assert torch.allclose(ramp, ramp[:, :1].expand(24, 8))
    assert torch.equal(interpolate_positional_embedding(pos, (g, g)), pos)
    with pytest.raises(ValueError, match="square"):
        interpolate_positional_embedding(torch.randn(1 + 10, c), (2, 2))


def test_missing_clip_weights_name_the_file_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("VIREID_WEIGHTS", str(tmp_path / "w"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_clip_weights(None)
    assert "ViT-B-16.pt" in str(err.value) and "openaipublic" in str(err.value)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_clip_weights(str(tmp_path / "nope.pt"))
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "ViT-B-16.pt").write_bytes(b"x")
    assert resolve_clip_weights(None) == tmp_path / "w" / "ViT-B-16.pt"


def test_clip_tokenizer_without_open_clip_names_the_extra(monkeypatch):
    from vireid.models.clip import ClipTokenizer

    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if the [text] extra were not installed
    with pytest.raises(MissingDependencyError, match=r"vireid\[text\]"):
        ClipTokenizer().encode(["a person"])


def test_token_batch_to_keeps_fields():
    tb = TokenBatch(torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 3, dtype=torch.bool))
    moved = tb.to("cpu")
    assert len(moved) == 2 and moved.mask.dtype == torch.bool
