"""dsteer-eval: lm-evaluation-harness plugins for testing the D-STEER thesis.

Importing this package is deliberately cheap (no torch, no lm_eval): it is imported
at interpreter start by the ``dsteer_eval.pth`` hook that connects our ``steered``
model to the plain ``lm_eval`` command.
"""

__version__ = "0.1.0"
