"""The input half of the train step: a batch of uint8 images becomes the model's inputs and
targets, on the device.

`inputs.py` chains the pieces in their order; each piece is a pure array function in its own
module: `crop_flip.py` (crop, flip, cutout), `color_jitter.py`, `randaugment.py`, `mixing.py`
(mixup, CutMix) and `normalize.py` (normalisation, resizing, channel statistics).
"""
