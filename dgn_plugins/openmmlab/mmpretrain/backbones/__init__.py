"""The poster's CIFAR backbones, written from their papers, with ``norm_cfg`` (GN, DGN, BN, ...)."""
from .resnext_cifar import ResNeXtCIFAR
from .wrn import WideResNetCIFAR

__all__ = ["ResNeXtCIFAR", "WideResNetCIFAR"]
