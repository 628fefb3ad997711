"""The built-in dataset descriptors, one module per dataset. :func:`builtin_descriptors` lists
them; :mod:`derma_core.data.sources` registers them through the ``register_datasets`` hook."""

from __future__ import annotations

import importlib

#: Modules holding one ``DESCRIPTOR`` each, in the order ``derma datasets`` lists them.
MODULES = ("ham10000", "isic2019", "isic2020", "isic_archive", "bcn20000", "pad_ufes_20", "ddi", "fitzpatrick17k",
           "derm7pt")


def builtin_descriptors() -> list:
    """Every built-in :class:`~derma_core.data.descriptor.DatasetDescriptor`."""
    return [importlib.import_module(f"{__name__}.{m}").DESCRIPTOR for m in MODULES]
