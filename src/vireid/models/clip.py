"""CLIP ViT-B/16 image and text towers for text -> RGB+T retrieval at paper scale (method-dikdnet.md 5.8, 3).

The towers come from ``open_clip`` (optional extra ``[text]``, imported lazily) and are wrapped so that
they honour vireid's encoder interfaces: images -> :class:`~vireid.models.image_encoders.ImageEncoding`
(projected CLS and every projected patch token), texts -> :class:`~vireid.models.text.encoding.TextEncoding`
(projected EOT token and every projected token), both of width d = 512.

IRRA details reproduced (anosorae/IRRA ``model/clip_model.py``, ``model/build.py``):

- OpenAI weights use QuickGELU, so the architecture is always built with ``force_quick_gelu=True``.
- 384x128 input at stride 16 gives a 24x8 patch grid; the 14x14 positional grid is bilinearly interpolated
  to it, keeping the class position (:func:`interpolate_positional_embedding`).
- Every visual token goes through ``ln_post`` and the projection (not only CLS), likewise every text token
  through ``ln_final`` and ``text_projection``; the text feature is the token at ``argmax(ids)`` (EOT).
- MLM uses ``<|mask|>`` = 49405 (IRRA frees it by dropping the last BPE merge; open_clip's tokeniser keeps
  that merge, so the rare word that encodes to 49405 is read as a mask: a documented approximation).

Weights are never downloaded. ``model.clip.weights`` names a file (OpenAI's ``ViT-B-16.pt`` TorchScript
archive, or an open_clip ``.safetensors``/``.bin``); otherwise the user's caches are searched
(:func:`clip_weight_candidates`); when nothing is found :class:`~vireid.errors.WeightsNotFoundError` names
the files looked for and how to obtain one. Inference rebuilds the architecture without weights (the vireid
checkpoint holds every tensor).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vireid.errors import ConfigError, WeightsNotFoundError, require
from vireid.models.image_encoders import ImageEncoding
from vireid.models.text.encoding import TextEncoding
from vireid.models.text.tokenizer import TokenBatch

CLIP_ARCH = "ViT-B-16"
CLIP_OPENAI_URL = (
    "https://openaipublic.azureedge.net/clip/models/"
    "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt"
)
CLIP_HF_REPO = "timm/vit_base_patch16_clip_224.openai"
CLIP_FILES = ("ViT-B-16.pt", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")
SOT_ID, EOT_ID, MASK_ID = 49406, 49407, 49405
PATCH = 16
"""ViT-B/16's patch size; :class:`ClipImageEncoder` reads the patch size of the model it wraps."""


# ---------------------------------------------------------------------------------------------- weights


def clip_weight_candidates() -> list[Path]:
    """Files searched, in order, when ``model.clip.weights`` is not set.

    ``$VIREID_WEIGHTS`` and ``~/.cache/vireid/weights`` (any of :data:`CLIP_FILES`), OpenAI's own cache
    ``~/.cache/clip/ViT-B-16.pt``, and the Hugging Face hub cache of ``timm/vit_base_patch16_clip_224.openai``
    (where ``open_clip`` stores the OpenAI weights it downloads).
    """
    out: list[Path] = []
    folders = []
    env = os.environ.get("VIREID_WEIGHTS")
    if env:
        folders.append(Path(env).expanduser())
    folders.append(Path.home() / ".cache" / "vireid" / "weights")
    for folder in folders:
        out += [folder / name for name in CLIP_FILES]
    out.append(Path.home() / ".cache" / "clip" / "ViT-B-16.pt")
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface")), "hub"
    )
    snapshots = Path(hub).expanduser() / ("models--" + CLIP_HF_REPO.replace("/", "--")) / "snapshots"
    if snapshots.is_dir():
        for snap in sorted(snapshots.iterdir()):
            out += [snap / name for name in CLIP_FILES[1:]]
    return out


def resolve_clip_weights(spec: str | None) -> Path:
    """The CLIP weight file for ``model.clip.weights`` (a path, or ``None``/``auto`` to search the caches)."""
    if spec and str(spec).lower() not in ("auto", "none"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"model.clip.weights={spec}: the file does not exist.",
                fix=f"give the path of OpenAI's ViT-B-16.pt ({CLIP_OPENAI_URL}) or of an open_clip weight file.",
            )
        return path
    for candidate in clip_weight_candidates():
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(p) for p in clip_weight_candidates()[:6])
    raise WeightsNotFoundError(
        f"CLIP ViT-B/16 weights were asked for (model.image.name=clip or model.text.name=clip) but no local copy "
        f"was found (looked for {', '.join(CLIP_FILES)}; e.g. {looked}). vireid never downloads at run time.",
        fix=f"download {CLIP_OPENAI_URL} on a machine with internet into ~/.cache/vireid/weights/ (or "
        f"$VIREID_WEIGHTS), or pass model.clip.weights=/path/to/ViT-B-16.pt; for CPU experiments use the small "
        "configuration (model.image.name=resnet, model.text.name=tiny).",
    )


def clip_embed_dim(arch: str = CLIP_ARCH) -> int:
    """The joint embedding width d of open_clip architecture ``arch`` (512 for ViT-B-16), checked for use here.

    vireid tokenises with CLIP's BPE (vocabulary 49408, ``<|mask|>`` 49405 for MLM), so only architectures
    whose text tower uses that vocabulary are accepted; a :class:`~vireid.errors.ConfigError` names the key
    otherwise.
    """
    open_clip = require("open_clip", "text", "the CLIP encoders of DIKDNet's paper configuration")
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise ConfigError(
            f"model.clip.arch={arch} is not an open_clip architecture.",
            fix=f"use {CLIP_ARCH} (the paper's) or a name from open_clip.list_models().",
        )
    text_cfg = model_cfg.get("text_cfg", {})
    if text_cfg.get("hf_tokenizer_name") or int(text_cfg.get("vocab_size", ClipTokenizer.vocab_size)) != 49408:
        raise ConfigError(
            f"model.clip.arch={arch} has a text tower with its own tokeniser; vireid uses CLIP's BPE (49408 tokens).",
            fix=f"use {CLIP_ARCH} or another OpenAI-style CLIP architecture (e.g. ViT-B-32, ViT-S-32-alt).",
        )
    return int(model_cfg["embed_dim"])


def load_clip(weights: str | None, *, pretrained: bool = True, arch: str = CLIP_ARCH) -> nn.Module:
    """Build open_clip's CLIP model ``arch`` (ViT-B/16 by default; QuickGELU), with weights when ``pretrained``.

    ``pretrained=False`` builds the architecture only, randomly initialised (inference: the vireid checkpoint
    supplies every tensor; tests). Raises :class:`~vireid.errors.MissingDependencyError` without
    ``open_clip``, and :class:`~vireid.errors.WeightsNotFoundError` when no weight file is found. The cache
    search only knows ViT-B/16 files, so another ``arch`` needs ``weights`` when ``pretrained``.
    """
    if pretrained and arch != CLIP_ARCH and not (weights and str(weights).lower() not in ("auto", "none")):
        raise WeightsNotFoundError(
            f"model.clip.arch={arch} with model.clip.load=true needs model.clip.weights (the cache search only "
            f"finds {CLIP_ARCH} files).",
            fix="pass model.clip.weights=/path/to/weights for that architecture, or model.clip.load=false.",
        )
    path = resolve_clip_weights(weights) if pretrained else None
    open_clip = require("open_clip", "text", "the CLIP encoders of DIKDNet's paper configuration")
    if path is None:
        model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=True)
    elif path.suffix == ".pt":
        # OpenAI's release is a TorchScript archive; open_clip converts its state dict (QuickGELU included).
        model = open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
    else:
        model = open_clip.create_model(arch, pretrained=str(path), force_quick_gelu=True)
    return model.float().cpu()


def interpolate_positional_embedding(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a ViT positional table to a new patch grid, keeping the class position (IRRA ``resize_pos_embed``).

    ``pos`` is (1 + g*g, C) for a square g x g grid; the grid part is reshaped to (C, g, g), bilinearly
    interpolated to ``grid`` = (h, w) (``align_corners=False``), and flattened row-major; the class row is
    kept unchanged. Returns (1 + h*w, C).
    """
    n = pos.shape[0] - 1
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"positional table of {pos.shape[0]} rows is not 1 + a square grid")
    h, w = grid
    if (h, w) == (g, g):
        return pos.clone()
    cls, table = pos[:1], pos[1:]
    table = table.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    table = F.interpolate(table.float(), size=(h, w), mode="bilinear", align_corners=False).to(pos.dtype)
    return torch.cat([cls, table.permute(0, 2, 3, 1).reshape(h * w, -1)], dim=0)


# -------------------------------------------------------------------------------------------- tokeniser


class ClipTokenizer:
    """open_clip's BPE tokeniser (context 77) behind vireid's tokeniser interface.

    Padding is 0, ``<|startoftext|>`` 49406, ``<|endoftext|>`` 49407 (kept at the end when a caption is
    truncated), ``<|mask|>`` 49405 for MLM (IRRA). Picklable (DataLoader workers): the open_clip object is
    created lazily in each process.
    """

    kind = "clip_bpe"
    pad_id = 0
    mask_id = MASK_ID
    vocab_size = 49408

    def __init__(self, context_length: int = 77):
        self.context_length = int(context_length)
        self._impl = None

    def __getstate__(self) -> dict[str, Any]:
        return {"context_length": self.context_length}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["context_length"])

    def _tokenizer(self):
        if self._impl is None:
            open_clip = require("open_clip", "text", "the CLIP BPE tokeniser")
            self._impl = open_clip.get_tokenizer(CLIP_ARCH, context_length=self.context_length)
        return self._impl

    def encode(self, texts) -> TokenBatch:
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts; wrap a single text in a list")
        ids = self._tokenizer()(list(texts)).to(torch.int64)
        return TokenBatch(ids, ids != self.pad_id)

    def special_mask(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids == self.pad_id) | (ids >= MASK_ID)

    def random_token_range(self) -> tuple[int, int]:
        return 1, MASK_ID

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "context_length": self.context_length}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClipTokenizer) and other.context_length == self.context_length

    def __hash__(self) -> int:
        return hash((self.kind, self.context_length))


# ---------------------------------------------------------------------------------------------- towers


def _run_blocks(transformer: nn.Module, x: torch.Tensor, attn_mask=None, keep: tuple[int, ...] = ()):
    """Run open_clip's ``Transformer`` block by block on (B, N, C) tokens, returning the kept layers' outputs.

    Layers are numbered from 1 (ViT-B/16 has 12). Handles both sequence-first and batch-first stacks.
    """
    batch_first = getattr(transformer, "batch_first", False)
    if not batch_first:
        x = x.transpose(0, 1)
    kept = []
    for index, block in enumerate(transformer.resblocks, start=1):
        x = block(x, attn_mask=attn_mask)
        if index in keep:
            kept.append(x if batch_first else x.transpose(0, 1))
    if not batch_first:
        x = x.transpose(0, 1)
    return x, kept


class ClipImageEncoder(nn.Module):
    """CLIP's visual tower on H x W person images: (B, 3, H, W) -> :class:`ImageEncoding`.

    ``cls`` is the projected class token (B, 512); ``tokens`` (B, 1 + H/16 * W/16, 512) are every token after
    ``ln_post`` and the projection (class token first). ``layers`` (for IKDM on tokens) are the raw
    outputs of blocks 4, 8 and 12 without the class token, (B, N, 768) each.
    """

    token_layers = (4, 8, 12)

    def __init__(self, clip_model: nn.Module, height: int, width: int):
        super().__init__()
        visual = clip_model.visual
        patch = int(visual.conv1.stride[0])  # 16 for ViT-B/16; read from the model for other architectures
        if height % patch or width % patch:
            raise ConfigError(
                f"data.height x data.width = {height}x{width} is not a multiple of CLIP's {patch}-pixel patches.",
                fix=f"use 384x128 (IRRA, ViT-B/16) or another multiple of {patch}.",
            )
        self.visual = visual
        self.grid = (height // patch, width // patch)
        with torch.no_grad():
            table = interpolate_positional_embedding(visual.positional_embedding.detach(), self.grid)
        visual.positional_embedding = nn.Parameter(table)
        self.embed_dim = int(visual.proj.shape[1])
        self.layer_channels = (int(visual.proj.shape[0]),) * len(self.token_layers)

    def forward(self, x: torch.Tensor, return_layers: bool = False) -> ImageEncoding:
        v = self.visual
        x = v.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_pre(x)
        x, kept = _run_blocks(v.transformer, x, keep=self.token_layers if return_layers else ())
        tokens = v.ln_post(x) @ v.proj
        layers = tuple(k[:, 1:] for k in kept) if return_layers else ()
        return ImageEncoding(cls=tokens[:, 0], tokens=tokens, layers=layers)


class ClipTextEncoder(nn.Module):
    """CLIP's text tower: (B, 77) :class:`TokenBatch` -> :class:`TextEncoding` (feature at EOT, every token)."""

    def __init__(self, clip_model: nn.Module, tokenizer: ClipTokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.transformer = clip_model.transformer
        self.ln_final = clip_model.ln_final
        projection = clip_model.text_projection
        if isinstance(projection, nn.Linear):  # some open_clip configs use a Linear; OpenAI's is a matrix
            projection = nn.Parameter(projection.weight.detach().t().contiguous())
        self.text_projection = projection
        self.register_buffer("attn_mask", clip_model.attn_mask.clone(), persistent=False)
        self.embed_dim = int(self.text_projection.shape[1])

    def forward(self, tokens: TokenBatch) -> TextEncoding:
        ids = tokens.ids
        length = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:length]
        x, _ = _run_blocks(self.transformer, x, attn_mask=self.attn_mask[:length, :length])
        x = self.ln_final(x) @ self.text_projection
        feature = x[torch.arange(ids.shape[0], device=ids.device), ids.argmax(dim=-1)]
        return TextEncoding(feature=feature, tokens=x, mask=tokens.mask)
