"""Triton kernels of the fused ops, one module per op family (``<op>_triton``).

Each module exposes plain launcher functions with exactly the arguments and return values of
the schemas in csrc/ops.cpp (contiguous inputs, opmath accumulation); ``mmfast.ops`` wraps
them as ``mmfast::<op>_triton`` custom ops. Nothing is imported here on purpose: importing a
kernel module decorates its ``@triton.jit`` functions, and on a machine without a GPU
``TRITON_INTERPRET=1`` must be set before that happens. Import the modules lazily:

* ``masked_fusion_triton``: ``forward``, ``backward``
* ``certified_margin_triton``: ``forward``, ``backward``
* ``noisy_modality_dropout_triton``: ``forward``
* ``subset_ops_triton``: ``subset_logits``, ``subset_accuracy``
"""

KERNEL_MODULES = (
    "masked_fusion_triton",
    "certified_margin_triton",
    "noisy_modality_dropout_triton",
    "subset_ops_triton",
)
