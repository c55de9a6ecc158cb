"""Train a neurofm model: ``python train.py [CONFIG.yaml] [key=value ...]``.

With no arguments: simulates a small spiking session (once), pretrains the Neuroformer demo
on the CPU in a few minutes, evaluates it against baselines and writes a pretrained folder
and a metrics file. Same code as ``neurofm train``; see neurofm/experiment.py.
"""

import sys

from neurofm.experiment import main

if __name__ == "__main__":
    sys.exit(main())
