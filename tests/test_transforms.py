"""CAJ channel augmentations, CutSwap, presets, paired RGB+T transforms and per-sample seeding."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from vireid.config import AugConfig, CutSwapConfig
from vireid.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RELEASE_ERASING_FILL,
    ChannelAdapGray,
    ChannelExchange,
    ChannelRandomErasing,
    CutSwap,
    PairedTestTransform,
    PairedTrainTransform,
    build_test_transform,
    build_train_views,
    derive_seed,
    pre_resize,
    seeded,
)
from vireid.data.transforms import channel as channel_mod
from vireid.data.transforms import cutswap as cutswap_mod
from vireid.errors import ConfigError

GRAY = 0.2989 * 1 + 0.5870 * 2 + 0.1140 * 3


def channels_123(h=4, w=4):
    """A tensor whose channels are the constants 1, 2, 3, so the outcome of a channel draw is readable."""
    return torch.stack([torch.full((h, w), 1.0), torch.full((h, w), 2.0), torch.full((h, w), 3.0)])


def outcome(out: torch.Tensor) -> str:
    values = tuple(round(float(out[c, 0, 0]), 4) for c in range(3))
    if values == (1.0, 2.0, 3.0):
        return "unchanged"
    if len(set(values)) == 1:
        return {1.0: "R", 2.0: "G", 3.0: "B", round(GRAY, 4): "gray"}[values[0]]
    raise AssertionError(f"unexpected outcome {values}")


def frequencies(transform, n=3000, make=channels_123):
    counts: dict[str, int] = {}
    for s in range(n):
        with seeded(s):
            key = outcome(transform(make()))
        counts[key] = counts.get(key, 0) + 1
    return {k: v / n for k, v in counts.items()}


def rand_image(h=12, w=8, seed=0):
    return torch.randn(3, h, w, generator=torch.Generator().manual_seed(seed))


def pil_image(h=24, w=12, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


# --- channel augmentations -------------------------------------------------------------------------------


def test_channel_exchange_picks_each_channel_with_probability_one_third():
    freq = frequencies(ChannelExchange(gray=2))
    assert set(freq) == {"R", "G", "B"}
    for k in "RGB":
        assert freq[k] == pytest.approx(1 / 3, abs=0.04)


def test_channel_exchange_gray3_adds_luminance_outcome():
    freq = frequencies(ChannelExchange(gray=3))
    assert set(freq) == {"R", "G", "B", "gray"}
    for k in ("R", "G", "B", "gray"):
        assert freq[k] == pytest.approx(1 / 4, abs=0.04)


def test_channel_adap_gray_distribution_matches_release():
    freq = frequencies(ChannelAdapGray(p=0.5))
    for k in "RGB":
        assert freq[k] == pytest.approx(1 / 4, abs=0.04)
    assert freq["gray"] == pytest.approx(1 / 8, abs=0.03)
    assert freq["unchanged"] == pytest.approx(1 / 8, abs=0.03)
    always = frequencies(ChannelAdapGray(p=1.0), n=800)
    assert "unchanged" not in always and always["gray"] == pytest.approx(1 / 4, abs=0.06)
    never = frequencies(ChannelAdapGray(p=0.0), n=800)
    assert "gray" not in never and never["unchanged"] == pytest.approx(1 / 4, abs=0.06)


def test_grayscale_uses_release_weights_on_normalised_values():
    out = ChannelExchange(gray=3)
    for s in range(50):
        with seeded(s):
            y = out(channels_123())
        if outcome(y) == "gray":
            assert torch.allclose(y, torch.full_like(y, GRAY))
            return
    raise AssertionError("grayscale outcome never drawn")


def test_channel_random_erasing_forced_draw_golden(monkeypatch):
    # area fraction 0.1 of 20x10 = 20, aspect 0.8 -> h = round(sqrt(16)) = 4, w = round(sqrt(25)) = 5.
    uniforms = iter([0.1, 0.8])
    randints = iter([3, 2])  # top, left
    monkeypatch.setattr(channel_mod, "_uniform", lambda a, b: next(uniforms))
    monkeypatch.setattr(channel_mod, "_randint", lambda a, b: next(randints))
    img = rand_image(20, 10)
    out = ChannelRandomErasing(p=1.0)(img)
    expected = img.clone()
    for c in range(3):
        expected[c, 3:7, 2:7] = RELEASE_ERASING_FILL[c]
    assert torch.equal(out, expected)


def test_channel_random_erasing_properties_and_probability():
    img = rand_image(24, 12)
    erased = 0
    n = 600
    for s in range(n):
        transform = ChannelRandomErasing(p=0.5, fill="zero")
        with seeded(s):
            box = transform.draw(24, 12)
        with seeded(s):
            out = transform(img)
        if box is None:
            assert torch.equal(out, img)
            continue
        erased += 1
        top, left, h, w = box
        assert 0 < h < 24 and 0 < w < 12
        assert 0.3 * 0.9 <= h / w <= (1 / 0.3) * 1.1 + 0.5  # rounding slack on tiny rectangles
        mask = torch.zeros(24, 12, dtype=torch.bool)
        mask[top : top + h, left : left + w] = True
        assert torch.all(out[:, mask] == 0)
        assert torch.equal(out[:, ~mask], img[:, ~mask])
    assert erased / n == pytest.approx(0.5, abs=0.07)


def test_channel_random_erasing_gives_up_when_nothing_fits():
    img = rand_image(8, 8)
    transform = ChannelRandomErasing(p=1.0, sl=1.0, sh=1.0, r1=1.0)  # h = w = 8 never < 8
    with seeded(0):
        assert torch.equal(transform(img), img)


def test_channel_random_erasing_single_channel_uses_first_constant(monkeypatch):
    # area fraction 0.25 of 8x8 = 16; aspect U(1, 1) = 1 -> a 4x4 rectangle at (0, 0)
    monkeypatch.setattr(channel_mod, "_uniform", lambda a, b: 0.25 if a != b else a)
    monkeypatch.setattr(channel_mod, "_randint", lambda a, b: 0)
    img = torch.zeros(1, 8, 8)
    out = ChannelRandomErasing(p=1.0, r1=1.0)(img)
    assert torch.all(out[0, :4, :4] == RELEASE_ERASING_FILL[0]) and out.sum() == 16 * RELEASE_ERASING_FILL[0]


# --- CutSwap ---------------------------------------------------------------------------------------------


def test_cutswap_region_forced_draw_golden(monkeypatch):
    uniforms = iter([0.5, 0.45])  # h = int(10*0.5) = 5, w = int(8*0.45) = 3
    randints = iter([1, 2, 4])  # channel G, top 2, left 4
    monkeypatch.setattr(cutswap_mod, "_uniform", lambda a, b: next(uniforms))
    monkeypatch.setattr(cutswap_mod, "_randint", lambda a, b: next(randints))
    img = rand_image(10, 8)
    out = CutSwap(p=1.0)(img)
    expected = img.clone()
    expected[:, 2:7, 4:7] = img[1, 2:7, 4:7]
    assert torch.equal(out, expected)


def test_cutswap_region_changes_only_the_drawn_rectangle():
    img = rand_image(16, 8)
    applied = 0
    for s in range(300):
        transform = CutSwap(p=0.5, ratio=(0.3, 0.6))
        with seeded(s):
            box = transform.draw(16, 8)
        with seeded(s):
            out = transform(img)
        if box is None:
            assert torch.equal(out, img)
            continue
        applied += 1
        c, top, left, h, w = box
        assert int(16 * 0.3) <= h <= int(16 * 0.6) and int(8 * 0.3) <= w <= int(8 * 0.6)
        mask = torch.zeros(16, 8, dtype=torch.bool)
        mask[top : top + h, left : left + w] = True
        assert torch.equal(out[:, ~mask], img[:, ~mask])
        for k in range(3):
            assert torch.equal(out[k][mask], img[c][mask])
        # The rectangle is not a no-op: at least two channels differ from the original there.
        assert (out[:, mask] != img[:, mask]).any()
    assert applied / 300 == pytest.approx(0.5, abs=0.09)


def test_cutswap_full_image_replicates_one_channel_over_the_whole_image():
    img = rand_image(16, 8)
    seen = set()
    applied = 0
    for s in range(300):
        with seeded(s):
            out = CutSwap(p=0.5, mode="full_image")(img)
        if torch.equal(out, img):
            continue
        applied += 1
        c = next(k for k in range(3) if torch.equal(out[0], img[k]))
        seen.add(c)
        assert torch.equal(out, img[c].expand(3, -1, -1))
    assert seen == {0, 1, 2}
    assert applied / 300 == pytest.approx(0.5, abs=0.09)


@pytest.mark.parametrize(
    "transform",
    [
        ChannelExchange(gray=3),
        ChannelAdapGray(1.0),
        ChannelRandomErasing(p=1.0),
        ChannelRandomErasing(p=1.0, fill="zero"),
        CutSwap(p=1.0),
        CutSwap(p=1.0, mode="full_image"),
    ],
    ids=repr,
)
def test_transforms_never_modify_the_input_in_place(transform):
    for s in range(20):
        img = rand_image(16, 8, seed=s)
        before = img.clone()
        with seeded(s):
            out = transform(img)
        assert torch.equal(img, before)
        assert out.data_ptr() != img.data_ptr() or torch.equal(out, before)


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="gray"):
        ChannelExchange(gray=1)
    with pytest.raises(ValueError, match="fill"):
        ChannelRandomErasing(fill="mean")
    with pytest.raises(ValueError, match="mode"):
        CutSwap(mode="box")
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        ChannelExchange()(torch.zeros(2, 3, 4, 4))


# --- seeding ---------------------------------------------------------------------------------------------


def test_seeded_is_reproducible_and_restores_the_global_state():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    with seeded(7):
        a = torch.rand(5)
    assert torch.equal(torch.rand(3), expected_next)
    with seeded(7):
        b = torch.rand(5)
    with seeded(8):
        c = torch.rand(5)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_derive_seed_is_stable_and_spreads():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    seeds = {derive_seed(0, e, p) for e in range(5) for p in range(200)}
    assert len(seeds) == 1000 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(1, 2) != derive_seed(2, 1)


# --- presets ---------------------------------------------------------------------------------------------


def kinds(pipe):
    return [type(t).__name__ for t in pipe.transforms]


def test_caj_preset_views():
    views = build_train_views(AugConfig(preset="caj"), CutSwapConfig(), 288, 144)
    assert (views.num_visible_views, views.num_infrared_views) == (2, 1)
    geometry = ["Pad", "RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert kinds(views.visible[0]) == [*geometry, "ChannelRandomErasing"]
    assert kinds(views.visible[1]) == [*geometry, "ChannelRandomErasing", "ChannelExchange"]
    assert kinds(views.infrared[0]) == [*geometry, "ChannelRandomErasing", "ChannelAdapGray"]
    assert views.visible[0].transforms[0].fill == 0 and views.visible[0].transforms[0].padding == 10
    assert views.visible[1].transforms[-1].gray == 2
    assert views.interpolation == "lanczos"


def test_agw_idkl_dakd_none_presets():
    agw = build_train_views(AugConfig(preset="agw"), None, 32, 16)
    assert kinds(agw.visible[0]) == ["Pad", "RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert kinds(agw.infrared[0]) == kinds(agw.visible[0])
    idkl = build_train_views(AugConfig(preset="idkl", pad_fill=127, erasing_p=0.5), None, 32, 16)
    expected = ["RandomHorizontalFlip", "Pad", "RandomCrop", "ToTensor", "Normalize", "RandomErasing"]
    assert kinds(idkl.visible[0]) == expected and kinds(idkl.infrared[0]) == expected
    assert idkl.visible[0].transforms[1].fill == 127 and idkl.interpolation == "bilinear"
    erasing = idkl.visible[0].transforms[-1]
    assert (erasing.scale, erasing.ratio, erasing.value, erasing.p) == ((0.02, 0.33), (0.3, 3.3), 0, 0.5)
    dakd = build_train_views(AugConfig(preset="dakd"), CutSwapConfig(p=0.5), 32, 16)
    assert kinds(dakd.visible[0])[-2:] == ["CutSwap", "ChannelRandomErasing"]
    assert kinds(dakd.infrared[0])[-2:] == ["ChannelRandomErasing", "ChannelAdapGray"]
    assert dakd.num_visible_views == 1
    none = build_train_views(AugConfig(preset="none"), None, 32, 16)
    assert kinds(none.visible[0]) == ["ToTensor", "Normalize"]


def test_cutswap_config_inserts_cutswap_after_normalize_in_any_preset():
    for preset in ("agw", "caj", "idkl", "dakd", "none"):
        views = build_train_views(AugConfig(preset=preset), CutSwapConfig(p=0.3, mode="full_image"), 32, 16)
        for pipe in views.visible:
            names = kinds(pipe)
            at = names.index("CutSwap")
            assert names[at - 1] == "Normalize"
            assert pipe.transforms[at].p == 0.3 and pipe.transforms[at].mode == "full_image"
        assert all("CutSwap" not in kinds(p) for p in views.infrared)


def test_aug_config_knobs_are_honoured():
    views = build_train_views(
        AugConfig(preset="caj", pad=0, flip=0.0, erasing_p=0.0, erasing_fill="zero", adaptive_gray_p=0.25), None, 32, 16
    )
    assert kinds(views.visible[0]) == ["ToTensor", "Normalize"]
    assert kinds(views.infrared[0]) == ["ToTensor", "Normalize", "ChannelAdapGray"]
    assert views.infrared[0].transforms[-1].p == 0.25
    views = build_train_views(AugConfig(preset="caj", erasing_fill="zero", erasing_p=0.3), None, 32, 16)
    assert views.visible[0].transforms[-1].fill == (0.0, 0.0, 0.0) and views.visible[0].transforms[-1].p == 0.3
    with pytest.raises(ConfigError, match=r"aug\.flip"):
        build_train_views(AugConfig(flip=1.5), None, 32, 16)
    with pytest.raises(ConfigError, match="cutswap"):
        build_train_views(AugConfig(), CutSwapConfig(p=0.5, ratio_min=0.7, ratio_max=0.2), 32, 16)


@pytest.mark.parametrize("preset", ["agw", "caj", "idkl", "dakd", "none"])
def test_presets_produce_normalised_tensors_deterministically(preset):
    views = build_train_views(AugConfig(preset=preset), CutSwapConfig(p=0.5), 32, 16)
    img = pil_image(32, 16)
    for pipe in views.visible + views.infrared:
        with seeded(3):
            a = pipe(img)
        with seeded(3):
            b = pipe(img)
        assert a.shape == (3, 32, 16) and a.dtype == torch.float32
        assert torch.equal(a, b)
    if preset != "none":
        outs = []
        for s in range(6):
            with seeded(s):
                outs.append(views.visible[0](img))
        assert any(not torch.equal(outs[0], o) for o in outs[1:])
    assert "visible[0]" in views.describe()


def test_test_transform_golden_values():
    img = Image.new("RGB", (10, 20), (128, 64, 255))
    out = build_test_transform(8, 4)(img)
    assert out.shape == (3, 8, 4)
    for c, v in enumerate((128, 64, 255)):
        assert torch.allclose(out[c], torch.tensor((v / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]), atol=1e-5)


def test_pre_resize_matches_torchvision_resize():
    img = pil_image(40, 20)
    assert np.array_equal(
        np.asarray(pre_resize(img, 16, 8, "bilinear")), np.asarray(T.Resize((16, 8))(img))
    )  # torchvision's PIL path with its default (bilinear, antialiased) filter
    same = pil_image(16, 8)
    assert pre_resize(same, 16, 8) is same


# --- paired transforms -----------------------------------------------------------------------------------


def test_paired_transform_applies_the_same_flip_and_crop_to_both_images():
    img = pil_image(40, 20)
    transform = PairedTrainTransform(32, 16, erasing_p=0.0, pad=4)
    outs = []
    for s in range(12):
        with seeded(s):
            rgb, thermal = transform(img, img.copy())
        assert torch.equal(rgb, thermal)
        outs.append(rgb)
    # the geometry really varies, so the equality above is not trivial
    assert len({o.sum().item() for o in outs}) > 3


def test_paired_transform_matches_a_reference_crop_and_flip():
    rgb_img, t_img = pil_image(32, 16, seed=1), pil_image(32, 16, seed=2)
    transform = PairedTrainTransform(32, 16, erasing_p=0.0, pad=3, flip=0.5)
    flipped = 0
    for s in range(10):
        with seeded(s):
            flip = float(torch.rand(()).item()) < 0.5
            top, left, _, _ = T.RandomCrop.get_params(T.Pad(3)(rgb_img), (32, 16))
        flipped += flip

        def reference(img, flip=flip, top=top, left=left):
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else img
            img = T.Pad(3)(img).crop((left, top, left + 16, top + 32))
            return T.Normalize(CLIP_MEAN, CLIP_STD)(T.ToTensor()(img))

        with seeded(s):
            rgb, thermal = transform(rgb_img, t_img)
        assert torch.allclose(rgb, reference(rgb_img)) and torch.allclose(thermal, reference(t_img))
    assert 0 < flipped < 10


def test_paired_erasing_shared_or_independent():
    img = pil_image(32, 16)
    shared = PairedTrainTransform(32, 16, erasing_p=1.0, pair_erase="shared")
    independent = PairedTrainTransform(32, 16, erasing_p=1.0, pair_erase="independent")
    differs = 0
    for s in range(10):
        with seeded(s):
            a, b = shared(img, img)
        assert torch.equal(a, b)
        with seeded(s):
            a, b = independent(img, img)
        differs += not torch.equal(a, b)
    assert differs >= 8
    # the erased value is the normalisation mean written into the normalised tensor (IRRA)
    with seeded(0):
        a, _ = shared(Image.new("RGB", (16, 32), (0, 0, 0)), Image.new("RGB", (16, 32)))
    assert any(torch.isclose(a[0], torch.tensor(CLIP_MEAN[0])).flatten())


def test_paired_test_transform_and_normalisation_option():
    img = Image.new("RGB", (10, 20), (255, 0, 0))
    rgb, thermal = PairedTestTransform(8, 4, normalization="imagenet")(img, img)
    assert rgb.shape == thermal.shape == (3, 8, 4)
    assert torch.allclose(rgb[0], torch.tensor((1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]), atol=1e-5)
    rgb, _ = PairedTestTransform(8, 4)(img, img)
    assert torch.allclose(rgb[1], torch.tensor((0 - CLIP_MEAN[1]) / CLIP_STD[1]), atol=1e-5)
    with pytest.raises(ValueError, match="pair_erase"):
        PairedTrainTransform(8, 4, pair_erase="maybe")
