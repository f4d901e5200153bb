"""Vision Transformers for re-ID, built on timm: ``vit_small``, ``vit_base`` and the LUPerson variants
with TransReID-SSL's IBN convolution stem, ``vit_small_ics``, ``vit_base_ics`` (Luo et al., 2021).

The blocks are timm's (attention, MLP, drop path): only the re-ID specific parts live here.

- **Patch grid.** Patch 16 on the run's ``data.height × data.width`` (256×128: a 16×8 grid); any size
  divisible by 16 works, and a checkpoint pre-trained on another grid has its position embeddings
  resized when it is imported (:func:`resize_position_embedding`: bilinear, the class token's kept).
- **ICS stem.** Instead of one 16×16 patch projection, three 3×3-or-7×7 convolutions (7×7 stride 2,
  then two 3×3; IBN after the first two, BatchNorm after the third, each followed by ReLU) take the
  image to 64 channels at half resolution, and an 8×8 stride-8 projection makes the tokens: the same
  16-pixel patches, seen through a convolutional stem whose instance normalisation removes per-image
  colour and contrast (TransReID-SSL's "IBN-based convolution stem"). Key names follow their released
  weights (``patch_embed.conv.1.IN.weight``, ``patch_embed.proj.weight``).
- **The feature** the rest of the toolkit gets is the class token after the final LayerNorm (what
  TransReID-SSL's evaluation and clustering use, before their BN neck); :meth:`features` also gives
  the patch tokens as an ``N×C×h×w`` map, which is what PPLR's horizontal stripes pool.
- ``last_stride`` means nothing to a transformer and is ignored; BatchNorm exists only in the ICS stem
  (and in the re-ID neck), so ``bn_groups`` / SyncBatchNorm act on those alone.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, to_2tuple
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .backbones import BACKBONES
from .ibn import IBN

PATCH_SIZE = 16
STEM_CHANNELS = 64
STEM_STRIDE = 2
LAYER_NORM_EPS = 1e-6  # TransReID-SSL's (and DINO's) LayerNorm


class ConvStemPatchEmbed(PatchEmbed):
    """TransReID-SSL's IBN convolution stem followed by a ``patch/2`` projection (see the module notes).

    Takes timm's ``embed_layer`` arguments, so :class:`~timm.models.vision_transformer.VisionTransformer`
    builds it in place of its patch projection; grid sizes account for the stem's stride.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = PATCH_SIZE, in_chans: int = 3,
                 embed_dim: int = 768, **kwargs) -> None:
        height, width = to_2tuple(img_size)
        super().__init__(img_size=(height // STEM_STRIDE, width // STEM_STRIDE), patch_size=patch_size // STEM_STRIDE,
                         in_chans=STEM_CHANNELS, embed_dim=embed_dim, **kwargs)
        c = STEM_CHANNELS
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, c, kernel_size=7, stride=STEM_STRIDE, padding=3, bias=False), IBN(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, bias=False), IBN(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
        )

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        ratio = super().feat_ratio(as_scalar)
        return ratio * STEM_STRIDE if as_scalar else tuple(r * STEM_STRIDE for r in ratio)

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        return super().dynamic_feat_size((img_size[0] // STEM_STRIDE, img_size[1] // STEM_STRIDE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.conv(x))


class VisionTransformerBackbone(VisionTransformer):
    """A timm ViT (patch 16, class token, LayerNorm eps 1e-6, qkv bias, MLP ratio 4) giving the re-ID
    toolkit what a backbone gives: :meth:`features` -> (patch-token map ``N×C×h×w``, class token ``N×C``).

    Built for ``image_size`` (its position embeddings hold that grid); other sizes divisible by 16
    still run (timm resamples the embeddings on the fly: DINO's small crops).
    """

    class_token = True  # the global feature is the class token, not a pooled map

    def __init__(self, *, embed_dim: int, depth: int, num_heads: int, conv_stem: bool,
                 image_size: tuple[int, int] = (256, 128), drop_path: float = 0.0) -> None:
        super().__init__(
            img_size=image_size, patch_size=PATCH_SIZE, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            mlp_ratio=4.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=LAYER_NORM_EPS), num_classes=0,
            global_pool="token", dynamic_img_size=True, drop_path_rate=drop_path,
            embed_layer=ConvStemPatchEmbed if conv_stem else PatchEmbed,
        )
        self.out_channels: int = embed_dim
        self.image_size = tuple(image_size)

    @property
    def grid_size(self) -> tuple[int, int]:
        """The patch grid of the image size the model was built for (its position embeddings)."""
        return tuple(self.patch_embed.grid_size)

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``N×3×H×W`` -> (patch tokens as ``N×C×H/16×W/16``, class token ``N×C``), after the final LayerNorm."""
        tokens = self.forward_features(images)
        grid_h, grid_w = self.patch_embed.dynamic_feat_size((images.shape[-2], images.shape[-1]))
        patches = tokens[:, self.num_prefix_tokens:]
        feature_map = patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], grid_h, grid_w)
        return feature_map, tokens[:, 0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The patch-token map (what a convolutional backbone's forward gives)."""
        return self.features(images)[0]

    def resize_position_embedding(self, pos_embed: torch.Tensor) -> torch.Tensor:
        """A checkpoint's ``pos_embed`` (``1×(1+h·w)×C``) on this model's grid (see the function below)."""
        return resize_position_embedding(pos_embed, self.grid_size, prefix_tokens=self.num_prefix_tokens)


def source_grid(num_patches: int, target: tuple[int, int]) -> tuple[int, int]:
    """The grid a checkpoint's ``num_patches`` position embeddings were trained on.

    A checkpoint does not say: a square number is a square grid (ImageNet's 14×14), else a 2:1 grid
    if it has one (person images: LUPerson's 16×8 at 256×128, as TransReID-SSL's ``hw_ratio 2``),
    else the factorisation closest in aspect to ``target``.
    """
    side = math.isqrt(num_patches)
    if side * side == num_patches:
        return side, side
    height = math.isqrt(2 * num_patches)
    if height * height == 2 * num_patches and height % 2 == 0:
        return height, height // 2
    aspect = target[0] / target[1]
    pairs = [(h, num_patches // h) for h in range(1, num_patches + 1) if num_patches % h == 0]
    return min(pairs, key=lambda hw: abs(math.log((hw[0] / hw[1]) / aspect)))


def resize_position_embedding(pos_embed: torch.Tensor, grid: tuple[int, int], *, prefix_tokens: int = 1) -> torch.Tensor:
    """``1×(prefix + h·w)×C`` position embeddings resized to ``grid`` (bilinear, corners not aligned, as
    TransReID-SSL's loader); the class token's embedding is kept as it is."""
    prefix, patches = pos_embed[:, :prefix_tokens], pos_embed[:, prefix_tokens:]
    source = source_grid(patches.shape[1], grid)
    if tuple(source) == tuple(grid):
        return pos_embed
    channels = patches.shape[2]
    image = patches.reshape(1, source[0], source[1], channels).permute(0, 3, 1, 2).float()
    resized = F.interpolate(image, size=tuple(grid), mode="bilinear", align_corners=False)
    resized = resized.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], channels).to(pos_embed.dtype)
    return torch.cat([prefix, resized], dim=1)


#: name -> (embed dim, depth, heads, ICS stem)
VIT_SIZES = {
    "vit_small": (384, 12, 6, False),
    "vit_base": (768, 12, 12, False),
    "vit_small_ics": (384, 12, 6, True),
    "vit_base_ics": (768, 12, 12, True),
}


def build_vit(name: str, *, image_size: tuple[int, int] = (256, 128), drop_path: float = 0.0,
              **sizes: int) -> VisionTransformerBackbone:
    """A randomly initialised ViT of ``VIT_SIZES[name]`` (``sizes`` overrides embed_dim / depth /
    num_heads: the tests' tiny transformers)."""
    embed_dim, depth, num_heads, conv_stem = VIT_SIZES[name]
    return VisionTransformerBackbone(embed_dim=sizes.get("embed_dim", embed_dim), depth=sizes.get("depth", depth),
                                     num_heads=sizes.get("num_heads", num_heads), conv_stem=conv_stem,
                                     image_size=image_size, drop_path=drop_path)


def _registered(name: str):
    def factory(*, image_size: tuple[int, int] = (256, 128), drop_path: float = 0.0) -> VisionTransformerBackbone:
        return build_vit(name, image_size=image_size, drop_path=drop_path)

    factory.class_token = True  # what build_backbone and the config's rules ask of a transformer
    factory.__doc__ = f"{name}: embed dim, depth, heads, ICS stem = {VIT_SIZES[name]}"
    return factory


for _name in VIT_SIZES:
    BACKBONES.register(_name)(_registered(_name))
