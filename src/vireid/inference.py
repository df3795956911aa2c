"""Features from a trained checkpoint: images, RGB+thermal pairs or texts in, an L2-normalised matrix out.

:class:`FeatureExtractor` is the deployment entry point (``vireid.FeatureExtractor``). It rebuilds the model
of a checkpoint with :func:`vireid.engine.loading.load_model`, preprocesses inputs with the checkpoint's own
test transform (``method.test_transform(cfg)``) and calls the method's embedder, which computes only the
retrieval embedding. As in torchreid's extractor, paths, PIL images, numpy arrays and tensors are all
accepted, singly or in lists, and come back as one ``(N, D)`` float32 matrix, so that the same gallery
yields the same features whichever way it was loaded.

What each input type means:

=====================================  =============================================================
``str`` / ``os.PathLike``              an image file, decoded as RGB (``vireid.data.image_io``)
``PIL.Image.Image``                    an image (any mode; converted to RGB)
``numpy.ndarray`` uint8 (H, W, 3)      an RGB image; (H, W) is grayscale, replicated to 3 channels
``torch.Tensor`` uint8 (3, H, W)       an RGB image in torchvision's ``read_image`` layout
``torch.Tensor`` uint8 (N, 3, H, W)    N such images
``torch.Tensor`` float (3, h, w)       an image *already preprocessed* by the test transform (resized to
                                       the model input h x w and normalised); passed through unchanged
``torch.Tensor`` float (N, 3, h, w)    N such images
=====================================  =============================================================

A float tensor is taken as model input, as torchreid does, because that is what a user who has already
run the test transform holds; its size must equal the checkpoint's input size (checked), its normalisation
cannot be checked. Infrared/thermal inputs follow ``data.thermal_gray3`` of the checkpoint (grayscale
replicated to 3 channels) whatever their type, so a path and the decoded image give identical features.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vireid.data.image_io import load_image, to_rgb
from vireid.data.records import Modality
from vireid.devices import autocast, resolve_amp_dtype
from vireid.engine.loading import LoadedModel, load_model
from vireid.errors import CheckpointError, ConfigError, DataError

ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor
"""One image (see the module docstring for what each type means)."""

ModalityName = Literal["visible", "infrared", "text", "pair"]

TEXT_TASK = "text"
"""``method.task`` of the text -> RGB+thermal methods (DIKDNet); other methods embed single images."""


def parse_modality(value: str | int | Modality, *, task: str) -> ModalityName:
    """Normalise a modality argument for a checkpoint of ``task`` and reject what it cannot embed.

    Image checkpoints embed ``visible`` and ``infrared`` images; text checkpoints embed ``text`` and RGB+T
    ``pair`` inputs. Aliases: ``rgb``/``vis`` (visible), ``ir``/``thermal``/``nir`` (infrared), ``rgbt`` (pair).
    """
    key = value.name.lower() if isinstance(value, Modality) else str(value).strip().lower()
    if key in ("text", "caption"):
        name: ModalityName = "text"
    elif key in ("pair", "rgbt", "rgb+t"):
        name = "pair"
    else:
        try:
            name = "visible" if Modality.parse(value) is Modality.VISIBLE else "infrared"
        except ValueError:
            raise ConfigError(
                f"modality={value!r} is not a modality vireid knows.",
                fix="use 'visible' or 'infrared' for image checkpoints, 'text' or 'pair' for text checkpoints.",
            ) from None
    if task == TEXT_TASK and name in ("visible", "infrared"):
        raise ConfigError(
            f"modality={name!r}: this checkpoint is a text -> RGB+thermal model; it embeds texts and RGB+thermal "
            "pairs, not single images.",
            fix="use modality='text' for descriptions or modality='pair' with (rgb, thermal) inputs.",
        )
    if task != TEXT_TASK and name in ("text", "pair"):
        raise ConfigError(
            f"modality={name!r}: this checkpoint is an image (visible <-> infrared) model; it cannot embed "
            f"{'texts' if name == 'text' else 'RGB+thermal pairs'}.",
            fix="use modality='visible' or 'infrared', or a text checkpoint (DIKDNet) for text search.",
        )
    return name


def embed_with_flip(embed: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], flip: bool) -> torch.Tensor:
    """L2-normalised float32 features of ``embed(*inputs)``; with ``flip``, of both the inputs and their mirror
    images: ``l2(l2(h(x)) + l2(h(flip_W(x))))``, the definition of the protocol runner, so that features equal
    those ``vireid test`` scores. Shared by :class:`FeatureExtractor` and the ONNX graphs (``vireid.export``).
    """
    feats = F.normalize(embed(*inputs).float(), dim=1)
    if flip:
        mirrored = F.normalize(embed(*(torch.flip(x, dims=[-1]) for x in inputs)).float(), dim=1)
        feats = F.normalize(feats + mirrored, dim=1)
    return feats


def _describe(item: Any) -> str:
    if isinstance(item, np.ndarray | torch.Tensor):
        return f"{type(item).__name__} of shape {tuple(item.shape)} and dtype {item.dtype}"
    return type(item).__name__


class FeatureExtractor:
    """Embed images, RGB+thermal pairs or texts with a trained vireid checkpoint.

    Args:
        checkpoint: a checkpoint folder, a run folder (its best checkpoint), or a :class:`LoadedModel`.
        device: ``cuda``, ``cpu``, ``cuda:1``...; default the GPU if there is one.
        batch_size: inputs per forward pass.
        amp: ``none`` (default): fp32, the precision ``vireid test`` scores in, so an index built with the
            defaults holds the features that were evaluated. On the GPU ``auto`` (bf16 where supported, else
            fp16), ``bf16`` or ``fp16`` autocast the network for speed; features are always returned and
            normalised in float32.
        flip: flip test-time augmentation (:func:`embed_with_flip`); default the checkpoint's ``eval.flip``,
            so that features match ``vireid test``.
        prefer: which checkpoint of a run folder to use (``best`` or ``last``).

    Example::

        extractor = vireid.FeatureExtractor("runs/agw-sysu")
        gallery = extractor(["a.jpg", "b.jpg"], modality="visible")     # (2, D)
        query = extractor(thermal_array, modality="infrared")           # (1, D)
        scores = query @ gallery.T                                       # cosine similarities
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | LoadedModel,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        amp: str = "none",
        flip: bool | None = None,
        prefer: str = "best",
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be at least 1.")
        self.loaded = (
            checkpoint if isinstance(checkpoint, LoadedModel) else load_model(checkpoint, device=device, prefer=prefer)
        )
        if isinstance(checkpoint, LoadedModel) and device is not None:
            self.loaded.model.to(device)
        self.model = self.loaded.model.eval()
        self.cfg = self.loaded.cfg
        self.method = self.loaded.method
        self.task: str = getattr(self.method, "task", "vireid")
        self.device = next(self.model.parameters()).device
        self.batch_size = int(batch_size)
        self.amp_dtype = resolve_amp_dtype(amp, self.device)
        self.flip = bool(self.cfg.eval.flip if flip is None else flip)
        self.transform = self.method.test_transform(self.cfg)
        self.embedder = self.method.embedder(self.model, self.cfg)
        self.input_size: tuple[int, int] = (int(self.cfg.data.height), int(self.cfg.data.width))
        self.thermal_gray3 = bool(getattr(self.cfg.data, "thermal_gray3", False))
        if self.task == TEXT_TASK and not (
            hasattr(self.embedder, "embed_texts") and hasattr(self.embedder, "embed_pairs")
        ):
            raise CheckpointError(
                f"the {self.loaded.meta.get('method')} embedder of {self.loaded.path} has task 'text' but lacks "
                "embed_texts/embed_pairs."
            )

    # ------------------------------------------------------------------------------------------ properties

    @property
    def checkpoint_path(self) -> Path:
        """The checkpoint folder the weights came from."""
        return self.loaded.path

    @property
    def modalities(self) -> tuple[str, ...]:
        """The ``modality`` values this checkpoint accepts."""
        return ("text", "pair") if self.task == TEXT_TASK else ("visible", "infrared")

    # ------------------------------------------------------------------------------------------- main API

    def __call__(self, inputs: Any, modality: str | int | Modality) -> torch.Tensor:
        """Embed ``inputs`` of one ``modality``; returns (N, D) float32 on the CPU, each row of unit L2 norm.

        ``inputs`` is one input or a sequence (a uint8/float 4-D tensor counts as a sequence of images):
        images for ``visible``/``infrared``; strings for ``text``; ``(rgb, thermal)`` tuples for ``pair``.
        """
        name = parse_modality(modality, task=self.task)
        if name == "text":
            return self.extract_texts(inputs)
        if name == "pair":
            return self.extract_pairs(inputs)
        return self.extract_images(inputs, name)

    def extract_images(self, images: ImageInput | Sequence[ImageInput], modality: str | int | Modality) -> torch.Tensor:
        """(N, D) normalised features of single-modality images (image checkpoints)."""
        name = parse_modality(modality, task=self.task)
        if name not in ("visible", "infrared"):
            raise ConfigError(f"extract_images needs modality 'visible' or 'infrared', got {modality!r}.")
        items = _as_image_list(images)
        gray3 = self.thermal_gray3 and name == "infrared"
        mod = Modality.VISIBLE if name == "visible" else Modality.INFRARED
        chunks = []
        for start in range(0, len(items), self.batch_size):
            batch = torch.stack(
                [self._prepare(item, start + i, gray3) for i, item in enumerate(items[start : start + self.batch_size])]
            )
            chunks.append(self._run(lambda x, mod=mod: self.embedder.embed_images(x, mod), batch))
        return self._finish(chunks)

    def extract_pairs(
        self, pairs: Sequence[tuple[ImageInput, ImageInput]] | tuple[ImageInput, ImageInput]
    ) -> torch.Tensor:
        """(N, D) normalised features of calibrated RGB + thermal pairs (text checkpoints)."""
        parse_modality("pair", task=self.task)
        if isinstance(pairs, tuple) and len(pairs) == 2 and not isinstance(pairs[0], tuple):
            pairs = [pairs]
        pairs = list(pairs)
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, tuple | list) and len(pair) == 2):
                raise DataError(f"pair input {i} is a {_describe(pair)}, not an (rgb, thermal) tuple.")
        chunks = []
        for start in range(0, len(pairs), self.batch_size):
            rgb, thermal = [], []
            for i, (a, b) in enumerate(pairs[start : start + self.batch_size]):
                ta, tb = self._prepare_pair(a, b, start + i)
                rgb.append(ta)
                thermal.append(tb)
            rgb_batch, thermal_batch = torch.stack(rgb), torch.stack(thermal)
            chunks.append(self._run(self.embedder.embed_pairs, rgb_batch, thermal_batch))
        return self._finish(chunks)

    @torch.no_grad()
    def extract_texts(self, texts: str | Sequence[str]) -> torch.Tensor:
        """(N, D) normalised features of text descriptions (text checkpoints)."""
        parse_modality("text", task=self.task)
        texts = [texts] if isinstance(texts, str) else list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"text input {i} is {text!r}; give a non-empty description string.")
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            with self._autocast():
                out = self.embedder.embed_texts(texts[start : start + self.batch_size])
            chunks.append(out.float())
        return self._finish(chunks)

    def iter_paths(
        self, paths: Sequence[str | os.PathLike], modality: str | int | Modality, *, workers: int = 0
    ) -> Iterator[torch.Tensor]:
        """Embed a long list of image files batch by batch, decoding in ``workers`` processes.

        Yields (b, D) normalised float32 CPU features in the order of ``paths``; memory stays bounded by one
        batch, so galleries larger than memory can be streamed to disk (``vireid.index``).
        """
        name = parse_modality(modality, task=self.task)
        if name not in ("visible", "infrared"):
            raise ConfigError(f"iter_paths embeds single images; modality {modality!r} is not visible/infrared.")
        from torch.utils.data import DataLoader

        dataset = _PathDataset(list(paths), self.transform, self.thermal_gray3 and name == "infrared")
        loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
        )
        mod = Modality.VISIBLE if name == "visible" else Modality.INFRARED
        for batch in loader:
            yield self._finish([self._run(lambda x: self.embedder.embed_images(x, mod), batch)])

    def iter_pair_paths(
        self, pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]], *, workers: int = 0
    ) -> Iterator[torch.Tensor]:
        """:meth:`iter_paths` for (rgb path, thermal path) pairs of a text checkpoint."""
        parse_modality("pair", task=self.task)
        from torch.utils.data import DataLoader

        dataset = _PairPathDataset(list(pairs), self.transform, self.thermal_gray3)
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=workers)
        for rgb, thermal in loader:
            yield self._finish([self._run(self.embedder.embed_pairs, rgb, thermal)])

    # ------------------------------------------------------------------------------------------- internals

    def _autocast(self):
        return autocast(self.device, self.amp_dtype)

    @torch.no_grad()
    def _run(self, fn, *batches: torch.Tensor) -> torch.Tensor:
        """Normalised float32 features of the batch (with flip TTA if set), see :func:`embed_with_flip`."""
        batches = tuple(b.to(self.device, non_blocking=True) for b in batches)
        with self._autocast():
            return embed_with_flip(fn, batches, self.flip)

    @staticmethod
    def _finish(chunks: list[torch.Tensor]) -> torch.Tensor:
        if not chunks:
            raise DataError("no inputs were given to the feature extractor.")
        feats = torch.cat(chunks).float()
        return F.normalize(feats, dim=1).cpu()

    def _to_pil(self, item: ImageInput, index: int, gray3: bool) -> Image.Image | torch.Tensor:
        """A decoded RGB image, or a float tensor that is already model input."""
        if isinstance(item, str | os.PathLike):
            return load_image(item, gray3=gray3)
        if isinstance(item, Image.Image):
            img = to_rgb(item, f"input {index}") if item.mode != "RGB" else item
        elif isinstance(item, np.ndarray):
            img = _array_to_pil(item, index)
        elif isinstance(item, torch.Tensor):
            if item.is_floating_point():
                return self._check_preprocessed(item, index)
            if item.dtype != torch.uint8 or item.dim() != 3 or item.shape[0] not in (1, 3):
                raise DataError(
                    f"image input {index} is a {_describe(item)}; tensors must be uint8 (3, H, W) images or "
                    f"float (3, {self.input_size[0]}, {self.input_size[1]}) preprocessed model input."
                )
            img = _array_to_pil(item.expand(3, -1, -1).permute(1, 2, 0).cpu().numpy(), index)
        else:
            raise DataError(
                f"image input {index} is a {_describe(item)}; expected a path, a PIL image, a uint8 numpy array "
                "or a tensor."
            )
        if gray3:
            img = img.convert("L").convert("RGB")
        return img

    def _check_preprocessed(self, item: torch.Tensor, index: int) -> torch.Tensor:
        if item.dim() != 3 or tuple(item.shape) != (3, *self.input_size):
            raise DataError(
                f"image input {index} is a float tensor of shape {tuple(item.shape)}; float tensors are taken as "
                f"preprocessed model input and must be (3, {self.input_size[0]}, {self.input_size[1]}).",
                fix="pass the raw image (path, PIL, uint8 array or uint8 tensor) to have it resized and normalised.",
            )
        return item.float().cpu()

    def _prepare(self, item: ImageInput, index: int, gray3: bool) -> torch.Tensor:
        img = self._to_pil(item, index, gray3)
        return img if isinstance(img, torch.Tensor) else self.transform(img)

    def _prepare_pair(self, rgb: ImageInput, thermal: ImageInput, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = self._to_pil(rgb, index, False)
        b = self._to_pil(thermal, index, self.thermal_gray3)
        if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
            raise DataError(f"pair input {index} mixes a preprocessed float tensor with a raw image; give both raw.")
        if isinstance(a, torch.Tensor):
            return a, b  # type: ignore[return-value]
        return self.transform(a, b)


def _as_image_list(images: Any) -> list[ImageInput]:
    """A list of single images from one image, a sequence of images, or a 4-D batch tensor/array."""
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        return list(images.unbind(0))
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, str | os.PathLike | Image.Image | np.ndarray | torch.Tensor):
        return [images]
    if isinstance(images, Sequence):
        items = list(images)
        if not items:
            raise DataError("no images were given to the feature extractor.")
        return items
    raise DataError(f"images is a {_describe(images)}; give an image, a list of images or a 4-D batch.")


def _array_to_pil(array: np.ndarray, index: int) -> Image.Image:
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3)):
        raise DataError(
            f"image input {index} is a numpy array of shape {array.shape} and dtype {array.dtype}; arrays must be "
            "uint8 (H, W, 3) RGB or (H, W) grayscale.",
            fix="convert with np.asarray(PIL_image.convert('RGB')) or (x * 255).round().astype(np.uint8).",
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    img = Image.fromarray(np.ascontiguousarray(array))
    return img.convert("RGB") if img.mode != "RGB" else img


class _PathDataset(torch.utils.data.Dataset):
    def __init__(self, paths: list[str | os.PathLike], transform, gray3: bool):
        self.paths, self.transform, self.gray3 = paths, transform, gray3

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(load_image(self.paths[index], gray3=self.gray3))


class _PairPathDataset(torch.utils.data.Dataset):
    def __init__(self, pairs: list[tuple[str | os.PathLike, str | os.PathLike]], transform, gray3: bool):
        self.pairs, self.transform, self.gray3 = pairs, transform, gray3

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb, thermal = self.pairs[index]
        return self.transform(load_image(rgb), load_image(thermal, gray3=self.gray3))
