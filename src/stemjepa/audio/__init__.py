"""stemjepa.audio: decoding, resampling and the log-mel front-end.

SAMPLE_RATE lives here, in a module that imports nothing, so that every layer (config, data, models, search, evaluation)
can share the one rate the models are trained at without an import cycle.
"""

SAMPLE_RATE = 16000  # Hz: what every model, training cache and evaluation uses unless told otherwise
