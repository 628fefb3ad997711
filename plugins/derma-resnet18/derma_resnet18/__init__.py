"""derma plugin: the CNN baseline (torchvision ResNet-18, or any timm model), faithful to the original study's recipe.

Registers the ``resnet18`` backend, and the same backend as ``cnn``. torch is imported only when a run builds the classifier,
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
    # the same backend under a name that does not suggest one architecture (model.arch picks it)
    from derma_core.config import configs_dir

    register("cnn", _factory, config=str(configs_dir() / "resnet18.yaml"))
