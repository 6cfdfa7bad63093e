"""Where a frozen encoder's features come from in one training run: the embedding cache or the encoder.

The cache costs one encoder pass over every slice not cached yet (once: all folds and later runs
share it) and then nothing per step; online encoding costs one encoder pass per drawn slice, every
step, but lets nnU-Net's augmentation change the image. With the plans' ``auto`` policy the trainer
takes the cache when it is already complete, or when building it buys more training steps in this
run than it costs:

- epochs known (no time budget): the run draws ``draws`` slices in all, so building ``N`` missing
  slices once is cheaper than encoding every draw when ``draws > N``;
- a time budget ``T`` (seconds left): with ``t_e`` seconds to encode a slice and ``t_c`` seconds per
  step on features, the cache gives ``(T - N t_e) / t_c`` steps and online ``T / (t_c + B t_e)``
  (batch ``B``): the cache wins when ``T > N (t_c / B + t_e)``. ``t_e`` and ``t_c`` are measured on
  one batch when training starts, inside the budget.

On hippocampus (medsam_lite, 128 px, 2-core CPU) this is online for budgets below about an hour and a
half: the 7300-slice build alone takes about an hour.
"""
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class FeatureChoice:
    use_cache: bool
    reason: str  # for the training log


def choose_features(missing_items: int, batch_size: int, draws: Optional[int] = None, budget_s: Optional[float] = None,
                    encode_s_per_item: Optional[float] = None, step_s: Optional[float] = None) -> FeatureChoice:
    """The cache or online encoding for one run (see the module docstring); ``budget_s`` (with both
    measured costs) or ``draws`` says how long the run is."""
    if missing_items == 0:
        return FeatureChoice(True, "the embedding cache is complete")
    if budget_s is not None:
        if encode_s_per_item is None or step_s is None:
            raise ValueError("a time budget needs the measured encode and step costs")
        breakeven = missing_items * (step_s / batch_size + encode_s_per_item)
        return FeatureChoice(budget_s > breakeven, (
            f"{missing_items} slices to cache at {encode_s_per_item:.3f} s each, {step_s:.2f} s per step on "
            f"features: the cache pays after {breakeven:.0f} s of the {budget_s:.0f} s left"))
    if draws is None:
        raise ValueError("pass the run's slice draws or its time budget")
    return FeatureChoice(draws > missing_items, f"{missing_items} slices to cache, {draws} slices drawn in this run")
