"""Frozen BatchNorms keep their statistics: a frozen encoder (TinyViT's MBConv stage) is a fixed feature
extractor, yet ``module.train()`` would let its BatchNorms re-estimate running means from the training batches."""
from torch import nn


def keep_frozen_norms_in_eval(module: nn.Module) -> None:
    """Every BatchNorm of ``module`` whose affine parameters are all frozen back in eval mode (after
    ``module.train()``); trainable ones (an adapter's) stay as they are."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()
