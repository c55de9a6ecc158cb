"""Train a neurofm model: ``python train.py [CONFIG] [key=value ...]`` (``--help`` for more).

Same code as ``neurofm train`` (:func:`neurofm.experiment.main`). OpenMP's wait policy is
set before torch is imported (:mod:`neurofm.threads`).
"""

import sys

from neurofm.threads import set_wait_policy

set_wait_policy()

from neurofm.experiment import main  # noqa: E402  (after the wait policy: torch reads it on import)

if __name__ == "__main__":
    sys.exit(main())
