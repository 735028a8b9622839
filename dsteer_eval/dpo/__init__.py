"""L3: the DPO pipeline: training (trl + peft), the CPU LM head, the gate, hyper-parameter choice, model pairs, vector extraction, the null adapter."""
