"""openseer: self-supervised pretraining of vision backbones (SwAV + RegNet, the SEER recipe)."""

__version__ = "0.1.0"
