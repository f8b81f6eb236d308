"""The defect classifier: configuration, data, backbones, training and evaluation.

>>> from diag.classify.config import parse_train_config
>>> cfg = parse_train_config({"data": {"train": {"root": "data"}}})
>>> cfg.model.backbone, cfg.train.epochs, tuple(cfg.train.input_size)
('resnet50', 30, (704, 256))
"""
