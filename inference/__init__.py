"""DeSAM predictor (an nnUNetPredictor subclass), evaluation and previews; installed as ``desam_nnu.inference``."""
