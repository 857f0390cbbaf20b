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
* `run`: the steps as the rules call them (embed, train, attack), and `cli` their `ilm pilot` commands.

Its table and figure are `ilm.tables.pag_pilot` and `ilm.figures.pag_fgsm_sweep`, made by
`ilm table pag_pilot` and `ilm figure pag_fgsm_sweep` like every other table and figure.
"""
