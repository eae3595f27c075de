"""DreamPRM-1.5: instance-reweighted multimodal process reward models.

The library flows one way: data -> prompt -> prm -> losses/weighting -> problems -> engine.
"""

__version__ = "0.1.0"
