"""Everything that trains or fits models: the VQGAN (:mod:`.vqgan`, :mod:`.losses`), the codebook
ladder (:mod:`.kmeans`, :mod:`.ladder`, :mod:`.finetune`, :mod:`.photos`), the concealment
transformers (:mod:`.prior`, :mod:`.prior_data`), and the checkpoint/resume loop they share
(:mod:`.loop`). The runtime (sweeps, .vqn files, evaluation) never imports this package
(tests/test_structure.py checks it)."""
