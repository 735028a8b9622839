"""lm-eval model adapters shipped by dsteer-eval (installed as ``dsteer_eval.adapters``)."""
