"""derma_vlm: the vision-language machinery every VLM backend of derma shares.

A library package (it registers no backend itself). A model family supplies a
:class:`~derma_vlm.codec.PromptCodec` (how a question and images become model inputs, how an
answer is tokenised as the model emits it, its end-of-turn token); everything else is here, once:

* :mod:`derma_vlm.precision` -- the one dtype policy of a loaded model (weights, trainable copies,
  inputs, autocast) used by training, per-epoch scoring and test prediction alike;
* :mod:`derma_vlm.loading` -- :class:`~derma_vlm.loading.Loaded`, model folders, precision and
  quantisation loading helpers;
* :mod:`derma_vlm.scoring` -- label-likelihood scoring (one prefill per image, reused for every
  label continuation through the KV cache) and its brute-force reference;
* :mod:`derma_vlm.generation` -- batched, left-padded greedy answers;
* :mod:`derma_vlm.partial` -- append-only partial results, so interrupted prediction resumes;
* :mod:`derma_vlm.distributed` -- sharding prediction over torchrun ranks and gathering on rank 0;
* :mod:`derma_vlm.classifier` -- :class:`~derma_vlm.classifier.VlmClassifier`, the zero-shot
  predict loop (generate / score, resume, sharding, ``model_vqa.py`` answer files);
* :mod:`derma_vlm.training` -- answer-only loss examples and collation, peft LoRA wrapping, the
  Trainer subclass (projector LR, class weights, balanced sampler, label-scoring validation);
* :mod:`derma_vlm.lora` -- :class:`~derma_vlm.lora.VlmLoraClassifier`, fit with best-epoch
  selection, early stopping, resume after a kill, adapter saving and merge.
"""
