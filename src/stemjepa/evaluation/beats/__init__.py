"""Beat-tracking probe of the encoder's patch embeddings (paper Sec. IV).

The frozen encoder turns a whole track into one vector per 160 ms patch (its frequency tokens concatenated); 8 linear
heads per vector give a 50 fps beat activation, trained with BCE and label widening; a DBN (madmom) or a peak picker
turns the activation into beats, scored with mir_eval (F-measure, CMLt, AMLt) in k-fold cross-validation.

Modules: `annotations` (beat files and dataset layouts), `features` (patch features over whole tracks, cached),
`probe` (8-head linear probe, targets, training), `decode` (DBN / peak picking), `metrics` (mir_eval),
`crossval` (folds, train/test loop), `report` (metrics.json and the plot), `runner` (the whole evaluation).
"""
