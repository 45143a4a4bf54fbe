"""Wide ResNets (Zagoruyko & Komodakis, 2016): WRN-depth-k for 32x32 inputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gacd.models.archs import register_model
from gacd.models.preact_resnet import PreActResNet


def wrn_blocks_per_stage(depth: int) -> int:
    """Blocks per stage n for depth = 6n + 4 (3 stages of n two-conv blocks, the stem conv,
    the classifier and the two 1x1 shortcut convs counted as in the paper); ValueError if none."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError(
            f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, 40, ...), "
            f"got {depth!r}"
        )
    return (depth - 4) // 6


class WideResNet(PreActResNet):
    """Pre-activation wide basic blocks in three stages of widths 16k, 32k, 64k after a
    16-channel stem conv, with dropout between the two convs of each block; final BN-ReLU."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        depth: int,
        widen_factor: int,
        dropout: float = 0.0,
    ) -> None:
        n = wrn_blocks_per_stage(depth)
        if isinstance(widen_factor, bool) or not isinstance(widen_factor, int) or widen_factor < 1:
            raise ValueError(f"WRN widen_factor must be an integer >= 1, got {widen_factor!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        k = widen_factor
        super().__init__(
            in_channels,
            num_classes,
            mean,
            std,
            stem_width=16,
            widths=(16 * k, 32 * k, 64 * k),
            blocks=(n, n, n),
            dropout=dropout,
        )
        self.depth = depth
        self.widen_factor = widen_factor


@register_model("wrn", label="WRN", channels=3, size=32)
def wrn(*, depth: int, widen_factor: int, **kw: Any) -> WideResNet:
    """Any WRN-depth-k, e.g. `build_model("wrn", depth=28, widen_factor=10, ...)`."""
    return WideResNet(depth=depth, widen_factor=widen_factor, **kw)


@register_model("wrn_16_2", label="WRN-16-2", channels=3, size=32)
def wrn_16_2(**kw: Any) -> WideResNet:
    """~0.69M parameters."""
    return WideResNet(depth=16, widen_factor=2, **kw)


@register_model("wrn_34_2", label="WRN-34-2", channels=3, size=32)
def wrn_34_2(**kw: Any) -> WideResNet:
    """~1.86M parameters."""
    return WideResNet(depth=34, widen_factor=2, **kw)


@register_model("wrn_34_10", label="WRN-34-10", channels=3, size=32)
def wrn_34_10(**kw: Any) -> WideResNet:
    """~46.2M parameters: the usual adversarial-training teacher."""
    return WideResNet(depth=34, widen_factor=10, **kw)


@register_model("wrn_40_2", label="WRN-40-2", channels=3, size=32)
def wrn_40_2(**kw: Any) -> WideResNet:
    """~2.2M parameters."""
    return WideResNet(depth=40, widen_factor=2, **kw)
