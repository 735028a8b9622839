"""Steering-vector files: ours (safetensors) and the formats of the rest of the ecosystem.

* :mod:`.safetensors_file`   our format, one vector per hidden-state site, with metadata
* :mod:`.layer_conventions`  other tools' layer numbers vs our hidden-state sites
* :mod:`.gguf_control`       llama.cpp / repeng control vectors (``direction.<layer>`` in GGUF)
* :mod:`.torch_dicts`        lm-eval's built-in ``steer_path`` dict and the D-STEER authors' ``vectors.pt``
* :mod:`.formats`            detect a file's format and read or write any of them
"""

from dsteer_eval.vectors.safetensors_file import (
    FORMAT,
    FORMAT_VERSION,
    VectorFile,
    VectorFileError,
    check_compatible,
    model_fingerprint,
    save_vectors,
)
from dsteer_eval.vectors.formats import load_vectors  # the one dispatcher: safetensors or GGUF

__all__ = ["FORMAT", "FORMAT_VERSION", "VectorFile", "VectorFileError", "check_compatible",
           "load_vectors", "model_fingerprint", "save_vectors"]
