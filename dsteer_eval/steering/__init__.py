"""L1: every edit of a forward pass (hook), model sites, steering arguments, captured hidden states, random control directions."""
