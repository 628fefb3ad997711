"""derma's data pipeline, the same for every dataset.

* :mod:`.descriptor` — :class:`~.descriptor.DatasetDescriptor`: everything that belongs to a
  dataset (label set, grouping, modality, subgroups, split policy, licence) and how to read,
  fetch and imitate it; :mod:`.datasets` holds the built-in descriptors and ``folder`` (a dataset
  declared in a YAML spec);
* :mod:`.raw` — reading helpers for readers, and the generic verification of their rows;
* :mod:`.splits` — group-level splits (``seed``, ``grouped``, ``official``) and CV folds;
* :mod:`.prepare` — ``derma prep`` (verify, split, resize, cache) and :func:`~.prepare.load_prepared`;
* :mod:`.synthetic` — synthetic sets in any dataset's layout (``derma synth --like``);
* :mod:`.sources` — the registered datasets (``register_datasets``), the built-in ``synthetic``
  default, ``dermamnist`` and ``folder``;
* :mod:`.resize`, :mod:`.cache` — resizing into the memory-mapped image cache and reading it back;
* the commands (``derma prep``, ``synth``, ``download``, ``datasets``, ``vqa``, ``overlap``) are in
  :mod:`derma_core.cli.data`.
"""
