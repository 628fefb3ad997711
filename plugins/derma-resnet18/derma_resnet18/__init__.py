"""derma plugin: the ResNet-18 CNN baseline (torchvision), faithful to the original study's recipe.

Registers the ``resnet18`` backend. torch is imported only when a run builds the classifier,
so ``derma --help`` and ``derma plugins`` stay fast.
"""

from __future__ import annotations

from derma_core import hookimpl

__version__ = "0.1.0"


def _factory(config: dict):
    from .classifier import ResNet18Classifier

    return ResNet18Classifier(config)


@hookimpl
def register_classifiers(register):
    register("resnet18", _factory)
