"""derma plugin: foundation-model baselines.

* ``clip_zeroshot``: any open_clip model (an architecture with a pretrained tag, or an
  ``hf-hub:`` id such as BiomedCLIP), class prompts from templates x class names, zero-shot
  probabilities from the model's logit scale.
* ``linear_probe``: a multinomial logistic regression on frozen image features of an open_clip
  image tower or any timm model, the features cached on disk beside the prep cache.

torch, open_clip and timm are imported only when a run builds a classifier, so ``derma --help``
and ``derma plugins`` stay fast.
"""

from __future__ import annotations

from derma_core import hookimpl

__version__ = "0.1.0"


def _zeroshot(config: dict):
    from .zeroshot import CLIPZeroShotClassifier

    return CLIPZeroShotClassifier(config)


def _probe(config: dict):
    from .probe import LinearProbeClassifier

    return LinearProbeClassifier(config)


@hookimpl
def register_classifiers(register):
    register("clip_zeroshot", _zeroshot)
    register("linear_probe", _probe)
