"""neurofm: pretrained foundation models of neural recordings.

Neuroformer (spike tokens, multimodal GPT) and BaRISTA (spatiotemporal iEEG transformer),
trained from HDF5 session files (:mod:`neurofm.data`).
"""

__version__ = "0.1.0"
