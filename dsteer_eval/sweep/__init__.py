"""``dsteer-eval sweep``: alpha grids over lm-eval tasks with the model loaded once.

* :mod:`.grid`          the (layer, alpha) grid and its checks (before any model loads)
* :mod:`.runner`        planning, running and resuming the points; output layout
* :mod:`.sweep_lm`      the ``steered`` model re-pointed per grid point
* :mod:`.shared_prefix` layers below the steered site computed once for all alphas
* :mod:`.point_probes`  projection margin and restoration KL per point
* :mod:`.winrates`      G-Eval win-rate of each point vs alpha=0
"""
