"""AugMix and its Jensen-Shannon consistency loss (Hendrycks et al., ICLR 2020), toolkit-free.

The poster's "A" rows are models trained this way. Both pieces are plain numpy /
PIL / torch so that the study script (``bench/dgn_study.py --augmix``) and the
toolkit adapters (MMPretrain registers them) share one implementation:

- :mod:`.ops`: the paper's image operations at a severity;
- :mod:`.mix`: ``augment_and_mix``, one AugMix image from a seeded generator;
- :mod:`.jsd`: the consistency loss over a clean view and two AugMix views.
"""
from .jsd import AugMixJSDLoss, jsd_consistency
from .mix import AugMixParams, augment_and_mix, augment_batch, augmix_views

__all__ = ["AugMixJSDLoss", "jsd_consistency", "AugMixParams", "augment_and_mix", "augment_batch", "augmix_views"]
