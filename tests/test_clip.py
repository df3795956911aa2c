"""The CLIP path of DIKDNet on randomly initialised open_clip models (extra [text]; nothing is downloaded).

The towers are open_clip's smallest OpenAI-style architecture, ViT-S-32-alt (d = 256), built with
``pretrained=None``; the paper's ViT-B-16 shares the code path and only differs in size.
"""

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from vireid.config import load_config  # noqa: E402
from vireid.data.text_pairs import TextPairBatch  # noqa: E402
from vireid.engine.distributed import DistContext  # noqa: E402
from vireid.errors import ConfigError, WeightsNotFoundError  # noqa: E402
from vireid.methods import get_method  # noqa: E402
from vireid.methods.base import StepContext  # noqa: E402
from vireid.models.clip import ClipImageEncoder, ClipTextEncoder, ClipTokenizer, clip_embed_dim, load_clip  # noqa: E402
from vireid.models.text import mask_for_mlm  # noqa: E402

SMALL_ARCH = "ViT-S-32-alt"
CAPTIONS = ["a woman in a red coat and blue jeans", "a man with a black backpack"]


@pytest.fixture(scope="module")
def small_clip():
    torch.manual_seed(0)
    return load_clip(None, pretrained=False, arch=SMALL_ARCH).eval()


def test_image_encoder_cls_is_open_clips_encode_image(small_clip):
    size = small_clip.visual.image_size  # native size: the positional table is kept as it is
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    encoder = ClipImageEncoder(small_clip, size[0], size[1]).eval()
    with torch.no_grad():
        ours = encoder(x)
        reference = small_clip.encode_image(x)
    assert torch.allclose(ours.cls, reference, atol=1e-5, rtol=1e-4)
    assert torch.equal(ours.tokens[:, 0], ours.cls)
    assert ours.tokens.shape == (2, 1 + (size[0] // 32) * (size[1] // 32), clip_embed_dim(SMALL_ARCH))


def test_text_encoder_feature_is_open_clips_encode_text(small_clip):
    tokenizer = ClipTokenizer(77)
    tokens = tokenizer.encode(CAPTIONS)
    assert torch.equal(tokens.ids, open_clip.get_tokenizer("ViT-B-16")(CAPTIONS))
    encoder = ClipTextEncoder(small_clip, tokenizer).eval()
    with torch.no_grad():
        ours = encoder(tokens)
        reference = small_clip.encode_text(tokens.ids)
    assert torch.allclose(ours.feature, reference, atol=1e-5, rtol=1e-4)
    eot = tokens.ids.argmax(dim=1)
    assert bool((tokens.ids[torch.arange(2), eot] == 49407).all())
    assert torch.equal(ours.tokens[torch.arange(2), eot], ours.feature)


def _clip_batch(tokenizer, height, width):
    ids = tokenizer.encode(CAPTIONS)
    assert bool((ids.ids == 49407).any(dim=1).all())  # every caption keeps its EOT
    corrupted, labels = mask_for_mlm(ids.ids, tokenizer, 0.5, torch.Generator().manual_seed(0))
    return TextPairBatch(
        images=torch.randn(2, 2, 2, 3, height, width, generator=torch.Generator().manual_seed(2)),
        tokens=ids.ids,
        attention_mask=ids.mask,
        no_color_tokens=ids.ids,
        no_color_mask=ids.mask,
        label=torch.tensor([0, 1]),
        pair_index=torch.tensor([0, 1]),
        view_pair_index=torch.tensor([[0, 2], [1, 3]]),
        caption_index=torch.tensor([0, 1]),
        sample_index=torch.tensor([0, 1]),
        slot=torch.tensor([0, 1]),
        inst=torch.tensor([0, 0]),
        mlm_tokens=corrupted,
        mlm_labels=labels,
    )


def test_one_training_step_of_the_clip_configuration_on_tiny_input():
    """dikdnet/rgbt_pedes (CLIP text + image towers, MLM, IKDM on tokens) at 64 x 32, random init."""
    cfg = load_config(
        "dikdnet/rgbt_pedes",
        [
            f"model.clip.arch={SMALL_ARCH}",
            "model.embed_dim=256",
            "model.clip.load=false",
            "model.mlm_layers=1",
            "data.height=64",
            "data.width=32",
            "role=teacher",
            "ikdm.tokens=true",
        ],
    )
    method = get_method("dikdnet")
    from vireid.methods.dikdnet import build_tokenizer

    tokenizer = build_tokenizer(cfg, None)
    torch.manual_seed(0)
    model = method.build_model(cfg, num_classes=3, tokenizer=tokenizer).train()
    assert model.rgb.visual.positional_embedding.shape == (1 + 2 * 1, 384)  # 7x7 grid -> 2x1 at stride 32
    assert model.rgb.visual is not model.tir.visual  # separate RGB and TIR towers
    batch = _clip_batch(tokenizer, 64, 32)
    ctx = StepContext(epoch=0, iteration=0, global_step=0, dist=DistContext(), cfg=cfg)
    out = method.forward(model, batch, ctx)
    assert out.fused.shape == (2, 256) and out.view_rgb.shape == (2, 2, 256)
    assert out.ikd_token_dist.shape == (2, 2) and bool((out.mlm_count > 0).all())
    assert bool((batch.mlm_tokens == 49405).any())  # IRRA's <|mask|>
    loss = method.loss(out, batch, ctx)
    assert {"sdm", "itc_rgb", "uitc_tir", "mlm", "ikdm"} <= set(loss.parts)
    assert torch.isfinite(loss.total)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss.total.backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    for prefix in ("text.token_embedding", "text.text_projection", "rgb.visual.conv1", "tir.visual.conv1", "mlm."):
        assert any(name.startswith(prefix) for name in changed), prefix


def test_clip_arch_must_use_clips_bpe_and_its_width():
    with pytest.raises(ConfigError, match=r"model\.clip\.arch=nonexistent"):
        clip_embed_dim("nonexistent")
    assert clip_embed_dim("ViT-B-16") == 512
    cfg = load_config("dikdnet/rgbt_pedes", [f"model.clip.arch={SMALL_ARCH}", "model.clip.load=false"])
    from vireid.methods.dikdnet import build_tokenizer

    with pytest.raises(ConfigError, match=r"model\.embed_dim=256"):
        get_method("dikdnet").build_model(cfg, num_classes=2, tokenizer=build_tokenizer(cfg, None))
    with pytest.raises(WeightsNotFoundError, match=r"model\.clip\.weights"):
        load_clip(None, pretrained=True, arch=SMALL_ARCH)  # the cache search knows only ViT-B-16 files
