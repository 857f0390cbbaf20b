"""The paper's preliminary study: PAG on text classification (method-spec §6.7).

An MLP reads frozen sentence embeddings ([CLS] of the last layer of an `AutoModel` encoder) and
is trained with a Perceptually Aligned Gradients loss, then attacked in embedding space with the
Adversarial Robustness Toolbox. Modules:

* `config`: the `pilot:` section (`PilotConfig`) and the variants' names;
* `data`: the labelled texts (an HF dataset or the generated sentiment corpus), the encoder
  fetch and the embedding;
* `train`: the classifier, the four losses and training with selection on a validation split;
* `attacks`: clean accuracy, APGD-CE, Square and FGSM through ART, each a rate with n and a
  Wilson interval, and the FGSM sweep;
* `report`: the `pag_pilot` table and the `pag_fgsm_sweep` figure.
"""
