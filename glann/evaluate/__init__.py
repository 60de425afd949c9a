"""Evaluation: feature networks, FID/KID, precision/recall/density/coverage, mode coverage,
memorisation and reconstruction, the same way for every run (and for anyone's images).

    from glann.evaluate import evaluate
    result = evaluate(sampler_or_images, reference_images, features="domain", train=train_dataset)
    result["metrics"]["fd"], result["protocol"]

features.py  the feature networks (`inception`, `domain`) and batched extraction
classifier.py  the domain classifier: train once, cache by data hash, load safely
metrics.py   FD/KD via torchmetrics, PRDC, memorisation
modes.py     class histogram, classes covered, KL(generated || data), confident share
suite.py     evaluate(), evaluate_run() (`glann evaluate`), eval.json, the table
training.py  the cheap domain-FD check logged during training
"""
from .classifier import DomainClassifier, TrainedClassifier, domain_classifier, train_classifier
from .features import DomainFeatures, InceptionFeatures, as_uint8, extract_features
from .metrics import frechet_distance, kernel_distance, memorisation, prdc
from .modes import mode_stats
from .suite import evaluate, evaluate_images, evaluate_run, format_table, load_images, reference_data

__all__ = ["DomainClassifier", "DomainFeatures", "InceptionFeatures", "TrainedClassifier", "as_uint8",
           "domain_classifier", "evaluate", "evaluate_images", "evaluate_run", "extract_features", "format_table",
           "frechet_distance", "kernel_distance", "load_images", "memorisation", "mode_stats", "prdc",
           "reference_data", "train_classifier"]
