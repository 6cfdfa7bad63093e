"""DeSAM trainers (nnUNetTrainer subclasses); installed as ``desam_nnu.trainers``."""
