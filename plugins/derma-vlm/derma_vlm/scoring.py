"""Label-likelihood scoring: how likely the model finds each label string as its answer.

For every image, the log-likelihood of each label's token sequence as the model would emit it
after the generation prompt -- the end-of-turn token included by default, so a one-piece label
such as ``mel`` does not collect the mass of every answer that merely starts with ``▁mel``
(``melanocytic ...``) -- is summed over its tokens. One prefill of image and prompt
(``model(**prompt_inputs, use_cache=True)``) is shared by all labels: its last-position logits
score every label's first token, and its KV cache is repeated only for the distinct
continuation prefixes, which score the remaining tokens in one more forward. The result equals
scoring each label with its own full forward pass (:func:`brute_force_scores`, tested), at a
fraction of the cost, and unlike free generation it never gives an invalid answer and yields
probabilities (softmax over labels) for AUROC and calibration.

The codec's ``suppress_token_ids`` (image placeholders) are excluded from the softmax over the
vocabulary by default: the model can never emit them as an answer.

The answer strings come from the dataset's label set (:func:`score_classes` takes each class's
strings, e.g. its code, its display name or both); nothing here knows a particular label set.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .codec import per_token_keys


def label_token_ids(codec, labels: Sequence[str], include_eos: bool = True) -> list[list[int]]:
    """Each label's token ids as the answer after the generation prompt (then end-of-turn)."""
    out = []
    for label in labels:
        ids = list(codec.answer_ids(label))
        if not ids:
            raise ValueError(f"label {label!r} tokenises to nothing")
        if include_eos:
            ids.append(int(codec.end_of_turn_id))
        out.append(ids)
    return out


def continuation_branches(label_ids: list[list[int]]) -> tuple[list[list[int]], list[int | None]]:
    """The distinct token sequences that must be fed after the prompt to score all labels.

    A label's pieces after the first are predicted from inputs ``ids[:-1]``; inputs that are a
    prefix of another label's inputs share that branch. Returns ``(branches, branch_of_label)``
    (``None`` for one-piece labels, scored from the prefill alone)."""
    inputs = [tuple(ids[:-1]) for ids in label_ids]
    distinct = sorted({i for i in inputs if i}, key=len, reverse=True)
    branches: list[tuple[int, ...]] = []
    for cand in distinct:
        if not any(b[:len(cand)] == cand for b in branches):
            branches.append(cand)
    branch_of: list[int | None] = []
    for i in inputs:
        branch_of.append(None if not i else next(k for k, b in enumerate(branches) if b[:len(i)] == i))
    return [list(b) for b in branches], branch_of


def _log_probs(logits, exclude: Sequence[int]):
    import torch

    logits = logits.float()
    ids = [t for t in exclude if 0 <= t < logits.shape[-1]]
    if ids:
        logits = logits.clone()
        logits[..., ids] = float("-inf")
    return torch.log_softmax(logits, dim=-1)


def score_labels(loaded, images: list, question: str, labels: Sequence[str],
                 length_normalize: bool = False, batch_size: int = 8, include_eos: bool = True,
                 exclude_suppressed: bool = True, progress=None) -> np.ndarray:
    """Log-likelihoods ``(N, len(labels))`` of each label as the answer to ``question`` about each image.

    ``loaded`` is a :class:`~derma_vlm.loading.Loaded`. ``length_normalize`` divides by the number
    of label tokens (mean log-likelihood per token). ``include_eos`` scores the end-of-turn token
    right after the label (the answer is exactly the label). ``progress``, if given, is called
    with the number of images finished after each batch. Rows whose prompts differ in length
    (an image-size-dependent number of image tokens) are scored one image at a time, so padding
    never changes a score.
    """
    import torch

    model, codec, policy = loaded.model, loaded.codec, loaded.policy
    label_ids = label_token_ids(codec, labels, include_eos)
    branches, branch_of = continuation_branches(label_ids)
    exclude = tuple(codec.suppress_token_ids) if exclude_suppressed else ()
    device = loaded.input_device
    k = len(branches)
    if k:
        width = max(len(b) for b in branches)
        # Right-padded: padding comes after every real token, so causal attention keeps it unseen.
        branch_tensor = torch.tensor([b + [codec.pad_token_id] * (width - len(b)) for b in branches],
                                     dtype=torch.long)

    def score_batch(chunk: list) -> np.ndarray:
        b = len(chunk)
        inputs = codec.prompt_inputs(chunk, [question] * b)
        mask = inputs.get("attention_mask")
        if b > 1 and mask is not None and not bool(mask.all()):
            return np.concatenate([score_batch([image]) for image in chunk])
        inputs = policy.cast_inputs(inputs, device)
        prompt_len = inputs["input_ids"].shape[1]
        first = model(**inputs, use_cache=k > 0, logits_to_keep=1)
        lp_first = _log_probs(first.logits[:, -1, :], exclude)  # (b, V)
        lp_rest = None
        if k:
            cache = first.cache
            cache.batch_repeat_interleave(k)
            cont = branch_tensor.to(device).repeat(b, 1)  # row i*k + j: image i, branch j
            extra = {key: torch.zeros_like(cont, dtype=inputs[key].dtype) for key in per_token_keys(inputs)}
            # A family may need more to continue from a repeated cache (Qwen2.5-VL: mrope positions).
            more = getattr(codec, "continuation_kwargs", None)
            if more is not None:
                extra.update(more(model, inputs, prompt_len, cont.shape[1], k))
            cont_mask = torch.ones((b * k, prompt_len + cont.shape[1]), dtype=torch.long, device=device)
            rest = model(input_ids=cont, attention_mask=cont_mask, cache=cache, use_cache=True, **extra)
            lp_rest = _log_probs(rest.logits, exclude).view(b, k, cont.shape[1], -1)
        out = np.zeros((b, len(labels)), dtype=np.float64)
        for j, ids_j in enumerate(label_ids):
            total = lp_first[:, ids_j[0]].double()
            if len(ids_j) > 1:
                pos = torch.arange(len(ids_j) - 1, device=lp_rest.device)
                tgt = torch.tensor(ids_j[1:], device=lp_rest.device)
                total = total + lp_rest[:, branch_of[j], pos, tgt].double().sum(dim=1)
            if length_normalize:
                total = total / len(ids_j)
            out[:, j] = total.cpu().numpy()
        return out

    out = np.zeros((len(images), len(labels)), dtype=np.float64)
    with torch.inference_mode(), policy.autocast(device):
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            out[start:start + len(chunk)] = score_batch(chunk)
            if progress is not None:
                progress(len(chunk))
    return out


def brute_force_scores(loaded, images: list, question: str, labels: Sequence[str],
                       include_eos: bool = True, exclude_suppressed: bool = True) -> np.ndarray:
    """The slow reference: one full forward pass per (image, label). For tests and audits."""
    import torch

    from .codec import append_tokens

    codec, policy, device = loaded.codec, loaded.policy, loaded.input_device
    label_ids = label_token_ids(codec, labels, include_eos)
    exclude = tuple(codec.suppress_token_ids) if exclude_suppressed else ()
    out = np.zeros((len(images), len(labels)))
    with torch.inference_mode(), policy.autocast(device):
        for i, image in enumerate(images):
            prompt = codec.prompt_inputs([image], [question])
            n = prompt["input_ids"].shape[1]
            for j, ids_j in enumerate(label_ids):
                inputs = policy.cast_inputs(append_tokens(prompt, ids_j), device)
                logits = loaded.model(**inputs).logits[0]
                lp = _log_probs(logits[n - 1:-1], exclude)
                out[i, j] = float(lp[torch.arange(len(ids_j)), torch.tensor(ids_j)].double().sum())
    return out


def score_classes(loaded, images: list, question: str, answers: Sequence[Sequence[str]], **kwargs) -> np.ndarray:
    """Class log-likelihoods ``(N, K)`` for ``answers`` (per class, the strings that count as
    answering it): every string scored in one pass of :func:`score_labels` (one prefill per
    image), combined per class by log-sum-exp (the probability that the answer is any of them;
    a class with one string gets exactly that string's score). ``kwargs`` go to
    ``score_labels`` (``include_eos``, ``length_normalize``, ``batch_size``, ...)."""
    from scipy.special import logsumexp

    empty = [j for j, group in enumerate(answers) if not group]
    if empty:
        raise ValueError(f"class {empty[0]} has no answer string to score")
    flat = [s for group in answers for s in group]
    scores = score_labels(loaded, images, question, flat, **kwargs)
    out = np.zeros((len(images), len(answers)), dtype=np.float64)
    start = 0
    for j, group in enumerate(answers):
        block = scores[:, start:start + len(group)]
        out[:, j] = block[:, 0] if len(group) == 1 else logsumexp(block, axis=1)
        start += len(group)
    return out


