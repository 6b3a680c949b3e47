"""The fused ops: one public function per op, validating its arguments and dispatching to the
CUDA, Triton, C++ CPU or reference backend (``backend=`` or $MMFAST_BACKEND; auto by default).

See DESIGN.md "Op contracts"; :mod:`mmfast.ops.reference` holds the ground-truth definitions.
"""

from mmfast.ops import reference
from mmfast.ops._dispatch import BACKENDS, choose_backend
from mmfast.ops.certified_margin import certified_accuracy, certified_margin
from mmfast.ops.masked_fusion import masked_fusion
from mmfast.ops.noisy_modality_dropout import modality_noise_dropout, noisy_modality_dropout
from mmfast.ops.reference import all_subsets
from mmfast.ops.subset_logits import subset_accuracy, subset_logits

__all__ = [
    "BACKENDS",
    "all_subsets",
    "certified_accuracy",
    "certified_margin",
    "choose_backend",
    "masked_fusion",
    "modality_noise_dropout",
    "noisy_modality_dropout",
    "reference",
    "subset_accuracy",
    "subset_logits",
]
