"""Modules: drop-in wrappers of the fused ops, the model contract, encoders and heads."""

from mmfast.nn.model import MODALITIES, CertifiableModel, MultiModalModel, MultiModalOutput
from mmfast.nn.modules import CertifiedMargin, MaskedFusion, ModalityNoiseDropout, SubsetEvaluator

__all__ = [
    "MODALITIES",
    "CertifiableModel",
    "CertifiedMargin",
    "MaskedFusion",
    "ModalityNoiseDropout",
    "MultiModalModel",
    "MultiModalOutput",
    "SubsetEvaluator",
]
