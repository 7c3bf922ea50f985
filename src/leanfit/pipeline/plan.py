"""The bit plan of a run: each target's width by the config's fixed rule."""

from __future__ import annotations

import math
from collections.abc import Sequence

from leanfit.checkpoints.targets import Target
from leanfit.exceptions import BadInputError, bad_value
from leanfit.pipeline.config import LoftQConfig


def plan_bits(targets: Sequence[Target], config: LoftQConfig) -> dict[str, int]:
    """Bits of each target: uniform, or the first layers at ``high_bits`` (mixed precision).

    - uniform (default): every target gets ``config.bits``;
    - ``config.avg_bits``: LoftQ's mixed-precision rule. With ``L`` distinct block indices
      among the targets, the first ``k = ⌊L·(avg_bits − bits)/(high_bits − bits)⌋`` blocks get
      ``high_bits`` and the rest ``bits`` — for 2/4 bits, ``⌊L·(b − 2)/2⌋``, so the average
      over equal-sized blocks is at most ``avg_bits`` (e.g. 30 layers, 2.5 bits: 7 layers);
    - ``config.first_high_layers``: an explicit ``k``.

    "First" means the ``k`` smallest block indices; in an encoder–decoder both stacks' blocks
    with those indices are included. Targets outside the blocks (a pooler) get ``bits``. The
    widths and the rule were checked by :class:`LoftQConfig`; a plan under ``bits_budget`` is
    the allocation's (:mod:`leanfit.pipeline.allocation`), not this one.

    Returns
    -------
    dict of str to int
        ``target.name -> bits``, in the order of ``targets``.

    Raises
    ------
    BadInputError
        No targets, more high layers than the targets' blocks, or a mixed plan for targets
        without block indices.
    """
    if not targets:
        raise bad_value("targets", targets, "a non-empty list of Target")
    bits, high_bits = config.bits, config.high_bits
    if config.avg_bits is None and config.first_high_layers is None:
        return {target.name: bits for target in targets}
    layers = sorted({t.layer_index for t in targets if t.layer_index is not None})
    if not layers:
        raise BadInputError(
            "a mixed-precision plan needs targets inside numbered blocks (layers.N, layer.N, "
            f"h.N, block.N); none of {[t.name for t in targets[:3]]} is"
        )
    if config.avg_bits is not None:
        # Rounded before the floor so that e.g. 2.3 bits (not exact in binary) gives the
        # decimal answer: 20 layers · 0.3 / 2 = 3, not 2.9999999999999996 → 2.
        count = math.floor(round(len(layers) * (config.avg_bits - bits) / (high_bits - bits), 9))
    else:
        count = config.first_high_layers or 0  # given: the rule is mixed
        if count > len(layers):
            raise bad_value("first_high_layers", count, f"an integer in [0, {len(layers)}]")
    high = set(layers[:count])
    return {t.name: high_bits if t.layer_index in high else bits for t in targets}
