"""lm-eval YAML tasks shipped by dsteer-eval (installed as ``dsteer_eval.tasks``)."""
