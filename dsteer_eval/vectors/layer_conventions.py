"""Other tools' layer numbers vs dsteer-eval's hidden-state sites.

Our sites (:mod:`dsteer_eval.steering.sites`, ``output_hidden_states`` numbering, ``n`` decoder blocks):

* site ``0``            output of the token embeddings,
* site ``s`` (1..n-1)   output of decoder block ``s-1`` (``layers[s-1]``),
* site ``n``            the final **post-norm** state that feeds ``lm_head``.

**Block-output numbering** is what llama.cpp / repeng control vectors (``direction.<k>``), the
D-STEER authors' ``vectors.pt`` (``{k: tensor}``) and steering-vectors' ``layer_type="decoder_block"``
use: ``k`` is the decoder block whose output is steered, counted from 0. So ``k`` is our site
``k + 1``. Two block outputs have no exact counterpart:

* ``k = n - 1``, the last block's raw output, is taken *before* the final norm; our site ``n`` is
  after it (a different state: transformers' ``hidden_states[n]`` is post-norm). Reading such a
  vector for a model with ``n`` blocks is refused; it cannot be written either.
* llama.cpp refuses ``direction.0`` (its control-vector buffer has no slot for block 0), so our
  site 1 is not written to GGUF; a ``direction.0`` written by another tool is read as site 1.

**lm-eval's built-in hookpoints** are module names under ``model.base_model``: for Llama-family
models ``embed_tokens`` (site 0), ``layers.<k>`` (site ``k + 1``) and ``norm`` (site ``n``, the
same post-norm state as ours, since the hook edits the norm's output).
"""

from __future__ import annotations

import re

from dsteer_eval.steering.sites import resolve_parts, unwrap

BLOCK_OUTPUT = "block_output"  # metadata value of "source_layers" for vectors read in block numbering

_BLOCK_HOOK = re.compile(r"^(?:.*\.)?(?:layers|h|blocks|block)\.(\d+)$")
_FINAL_HOOKS = ("norm", "ln_f", "final_layer_norm", "final_norm", "norm_f")
_EMBED_HOOKS = ("embed_tokens", "wte", "embed_in", "word_embeddings")


def site_of_block(k: int) -> int:
    """Our site for the output of decoder block ``k`` (block-output numbering)."""
    if k < 0:
        raise ValueError(f"block index {k} is negative; block-output layer numbers count from 0")
    return k + 1


def block_of_site(site: int, num_layers: int | None, *, target: str) -> int:
    """The block-output number of our ``site``, or a ValueError saying why ``target`` cannot hold it."""
    if site == 0:
        raise ValueError(f"site 0 (the embeddings) has no block-output number in {target}")
    if num_layers is not None and site >= num_layers:
        raise ValueError(
            f"site {site} is the final post-norm state; {target} numbers block outputs, and its "
            f"last one (direction.{num_layers - 1}) is the raw output before the final norm, a "
            f"different state. Extract the vector at a site below {num_layers} to export it"
        )
    return site - 1


def site_of_hookpoint(name: str, num_layers: int | None) -> int:
    """Our site for an lm-eval built-in hookpoint name (Llama/GPT-2/NeoX module names)."""
    last = name.rsplit(".", 1)[-1]
    match = _BLOCK_HOOK.match(name)
    if match:
        k = int(match.group(1))
        if num_layers is not None and k >= num_layers - 1:
            raise ValueError(
                f"hookpoint {name!r} is the raw output of the last decoder block (before the final norm), "
                f"which no dsteer-eval site is (site {num_layers} is after the norm: hookpoint 'norm')"
            )
        return site_of_block(k)
    if last in _FINAL_HOOKS:
        if num_layers is None:
            raise ValueError(f"hookpoint {name!r} is the final norm; its site number needs the model's "
                             f"layer count: pass --num-layers N or --model")
        return num_layers
    if last in _EMBED_HOOKS:
        return 0
    raise ValueError(
        f"hookpoint {name!r} is not a decoder block ('layers.<k>'), the final norm or the embeddings; "
        f"pass --model so its module names can be matched, or convert only those hookpoints"
    )


def is_block_hookpoint(name: str) -> bool:
    return _BLOCK_HOOK.match(name) is not None


def hookpoint_of_site(site: int, num_layers: int | None, names: dict[int, str] | None = None) -> str:
    """lm-eval's hookpoint for our ``site``: the model's own module name when ``names`` is given,
    else the Llama-family names (``embed_tokens``, ``layers.<site-1>``, ``norm``)."""
    if names is not None:
        if site not in names:
            raise ValueError(f"the model has no module for site {site}")
        return names[site]
    if num_layers is None:
        raise ValueError("naming lm-eval hookpoints needs the model's layer count (the final site is "
                         "'norm', the others 'layers.<k>'): pass --num-layers N or --model")
    if site == 0:
        return "embed_tokens"
    return "norm" if site == num_layers else f"layers.{site - 1}"


def hookpoint_names(model) -> dict[int, str]:
    """``{site: module name under model.base_model}`` as lm-eval's built-in ``steered`` resolves them."""

    inner = unwrap(model)
    parts = resolve_parts(inner)
    by_module = {id(module): name for name, module in inner.base_model.named_modules()}
    names = {}
    for site in range(parts.num_sites):
        name = by_module.get(id(parts.site_module(site)))
        if name:
            names[site] = name
    return names
