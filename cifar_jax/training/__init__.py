"""Training: the train state, the compiled step (its update half), optimisers, set-up and loop.

`setup.py` builds a run once (data on the mesh, model, optimiser, state, compiled functions)
and `loop.py` trains it. The commands that only use a trained model (`cifar_jax.results`)
import `state.py`, `evaluation.py` and `checkpoint.py`, never the loop.
"""
