"""L1: every edit of a forward pass (hook), model sites, steering arguments, captured hidden states, random control directions.

The public face: ``from dsteer_eval.steering import Intervention, steer``.
"""

from dsteer_eval.steering.hook import Intervention, steer

__all__ = ["Intervention", "steer"]
