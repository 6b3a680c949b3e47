"""The fused ops: one public function per op, validating its arguments and dispatching to the
CUDA, Triton, C++ CPU or reference backend (``backend=`` or $MMFAST_BACKEND; auto by default).

Ops return named tuples (:mod:`mmfast.ops.results`). Wrappers check shapes, dtypes and devices
on every call; tensor values (finite non-negative weights / lip / sigma, targets in range) are
checked by the kernels in their own pass, and by the wrappers only for the reference backend or
with ``MMFAST_CHECK=1`` (a value check needs a device sync). Importing this package imports
neither Triton nor torch._dynamo.

See DESIGN.md "Op contracts"; :mod:`mmfast.ops.reference` holds the ground-truth definitions.
"""

from mmfast.ops import reference
from mmfast.ops._dispatch import BACKENDS, choose_backend
from mmfast.ops.certified_margin import certified_accuracy, certified_margin, pair_lipschitz
from mmfast.ops.masked_fusion import masked_fusion
from mmfast.ops.noisy_modality_dropout import modality_noise_dropout, noisy_modality_dropout
from mmfast.ops.reference import all_subsets
from mmfast.ops.results import (
    CertifiedMarginResult,
    MaskedFusionResult,
    ModalityNoiseDropoutResult,
    NoisyDropoutResult,
)
from mmfast.ops.subset_logits import subset_accuracy, subset_logits

__all__ = [
    "BACKENDS",
    "CertifiedMarginResult",
    "MaskedFusionResult",
    "ModalityNoiseDropoutResult",
    "NoisyDropoutResult",
    "all_subsets",
    "certified_accuracy",
    "certified_margin",
    "choose_backend",
    "masked_fusion",
    "modality_noise_dropout",
    "noisy_modality_dropout",
    "pair_lipschitz",
    "reference",
    "subset_accuracy",
    "subset_logits",
]
