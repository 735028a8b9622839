"""L6: the D-STEER report: dose-response on both sides of a base/DPO pair against a population of random
directions, the verdict card, and the Markdown/HTML page (``dsteer-eval report``)."""
