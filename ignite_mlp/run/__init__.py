"""One training run: its plan, data, engines and handlers put together by ``training.train``, its
checkpoints and how a run resumes, and the learning-rate finder.

Kept empty of imports, so ``ignite_mlp.run.<module>`` loads only what that module needs."""
